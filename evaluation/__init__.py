# This folder installs as `medlvr.evaluation` (pyproject's package-dir). From the repository root, `import evaluation`
# would load the folder a second time under another name, with its own registries and classes: refuse it.
if __name__ != "medlvr.evaluation":
    raise ImportError(f"`import {__name__}` loads the checkout's folder, not the package: "
                      "import medlvr.evaluation instead (installed by `pip install -e .`)")
