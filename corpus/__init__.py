# This folder installs as `medlvr.corpus` (pyproject's package-dir). From the repository root, `import corpus`
# would load the folder a second time under another name, with its own registries and classes: refuse it.
if __name__ != "medlvr.corpus":
    raise ImportError(f"`import {__name__}` loads the checkout's folder, not the package: "
                      "import medlvr.corpus instead (installed by `pip install -e .`)")
