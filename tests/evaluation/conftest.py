"""Session-wide fixtures of the evaluation tests: one tiny checkpoint and one `medlvr serve` process on it, shared by
the server's own tests (test_serve.py) and the harness tests (test_harnesses.py): starting a server costs seconds."""

import pytest

from tests.evaluation.serving import SERVED_K, start_server


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory):
    from medlvr.training.model import save_checkpoint
    from medlvr.training.tiny import build_tiny

    b = build_tiny(seed=2)
    return save_checkpoint(b.model, b.processor, tmp_path_factory.mktemp("serve") / "model", k_latent=SERVED_K)


@pytest.fixture(scope="session")
def server(ckpt, tmp_path_factory):
    media = tmp_path_factory.mktemp("media")
    srv = start_server(ckpt, "--max-batch", "8", "--max-prompt-tokens", "300", "--request-timeout", "120",
                       "--allowed-local-media-path", str(media), cwd=media)
    srv.media = media
    yield srv
    rc, out, err = srv.stop()
    assert rc == 0, err
    assert "shut down:" in out
