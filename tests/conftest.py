import os
import sys
from pathlib import Path

# The fused Triton kernels run under Triton's interpreter on CPU-only machines; the
# variable must be set before anything imports triton.
if os.environ.get("FRFSR_TEST_CUDA") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")
else:
    # the parity tests compare the fused kernels themselves with the reference ops: no
    # first-use self-check, which would swap a failing kernel for the reference op
    os.environ.setdefault("FRFSR_FUSED_SELFCHECK", "0")

# One intra-op thread (unless OMP_NUM_THREADS says otherwise, e.g. OMP_NUM_THREADS=2), here
# and in the subprocesses the tests start. The tests run tiny models, whose many small ops
# gain little from a second thread; on a busy 2-core machine two OpenMP threads per op wait
# on each other and a tiny forward gets 10-20x slower (measured: 0.4 s -> 7-13 s).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

try:
    torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))
except ValueError:          # e.g. "4,2" (nested levels) or empty: leave torch's default
    pass

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def one_thread():
    """One intra-op thread for the test, whatever OMP_NUM_THREADS says (tiny models run
    fastest so, and a busy CI box does not oversubscribe); restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------- real ComfyUI servers
# One server per ComfyUI build per test session (tests/comfy_server.py), shared by
# tests/test_comfy_server.py and tests/test_comfy_browser.py; started on first use, stopped
# at the end of the session. Each has its own loopback Hub (tests/hub_server.py) holding the
# bundled weights under the Hub workflow's repo id.
HUB_REPO, HUB_COMMIT = "frfsr/frfsr-default", "c0ffee" * 6 + "abcd"


@pytest.fixture(scope="session")
def comfy_servers(tmp_path_factory):
    """``get(build)`` -> the running server of that build (skips when the build is absent)."""
    import comfy_server as cs
    from hub_server import FakeHub
    from test_comfy_nodes import save_tiny_model
    from test_comfy_server import write_inputs

    if os.environ.get("FRFSR_SKIP_COMFYUI_SERVER") == "1":
        pytest.skip("FRFSR_SKIP_COMFYUI_SERVER=1")
    running, hubs = {}, []

    def get(build):
        if build.name in running:
            if isinstance(running[build.name], str):
                pytest.skip(running[build.name])
            return running[build.name]
        why = cs.missing(build)
        if why:
            running[build.name] = why
            pytest.skip(why)
        install = cs.prepare(build)
        from frfsr.hub import BUNDLED_DIR
        hub = FakeHub().start()
        hubs.append(hub)
        hub.add(HUB_REPO, HUB_COMMIT, BUNDLED_DIR)
        root = tmp_path_factory.mktemp(f"comfyui-{build.name}")
        # model folders outside models/frfsr: one configured for frfsr in extra_model_paths.yaml,
        # one not configured at all
        save_tiny_model(root / "elsewhere" / "extra" / "linked", seed=3)
        save_tiny_model(root / "elsewhere" / "unlisted" / "escape", seed=4)
        srv = cs.ComfyServer(install, root / "server", cs.REPO_ROOT, env={"HF_ENDPOINT": hub.url},
                             extra_model_paths={"frfsr_tests": {"frfsr": str(root / "elsewhere" / "extra")}})
        srv.hub, srv.build, srv.outside = hub, build, root / "elsewhere"
        write_inputs(srv.input)
        save_tiny_model(srv.models / "tiny")
        # symbolic links inside models/frfsr: into a configured extra folder (allowed), and out (refused)
        (srv.models / "linked").symlink_to(root / "elsewhere" / "extra" / "linked", target_is_directory=True)
        (srv.models / "escape").symlink_to(root / "elsewhere" / "unlisted" / "escape", target_is_directory=True)
        running[build.name] = srv.start()
        return srv

    yield get
    for srv in running.values():
        if not isinstance(srv, str):
            srv.stop()
            assert not srv.alive() and srv.last_returncode is not None    # no stray process
    for hub in hubs:
        if getattr(hub, "_server", None) is not None:
            hub.stop()
