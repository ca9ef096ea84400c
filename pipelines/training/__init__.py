"""Training assets (Stage 1 ROI-SFT; Stage 2 VLPO to come). Wire `TRAINING_ASSETS` into `medlvr.pipelines.definitions`
with a `pipes_subprocess_client` resource (`dg.PipesSubprocessClient()`) next to the corpus resources."""
