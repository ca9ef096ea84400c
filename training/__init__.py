# This folder installs as `medlvr.training` (pyproject's package-dir). From the repository root, `import training`
# would load the folder a second time under another name, with its own registries and classes: refuse it.
if __name__ != "medlvr.training":
    raise ImportError(f"`import {__name__}` loads the checkout's folder, not the package: "
                      "import medlvr.training instead (installed by `pip install -e .`)")
