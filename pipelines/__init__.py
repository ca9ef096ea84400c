# This folder installs as `medlvr.pipelines` (pyproject's package-dir). From the repository root, `import pipelines`
# would load the folder a second time under another name, with its own registries and classes: refuse it.
if __name__ != "medlvr.pipelines":
    raise ImportError(f"`import {__name__}` loads the checkout's folder, not the package: "
                      "import medlvr.pipelines instead (installed by `pip install -e .`)")
