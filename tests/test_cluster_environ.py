"""A local cluster's workers: their share of the cores, and no dashboard server.

In a module of its own: its nannies write their workers' environment into this process (a
Dask caveat), and a worker of another module's cluster that its nanny restarts after a kill
test would write its values here while this test runs. pytest-randomly keeps a module's
tests together, so no other cluster is alive during this one.
"""

from __future__ import annotations

import contextlib
import os
import socket
import urllib.error
import urllib.request

import pytest

pytest.importorskip("distributed")

from engine.cluster import THREAD_VARS, DaskSettings, dask_client  # noqa: E402


def _threads_here() -> dict:
    """On a worker: its environment's thread settings and the thread pools its libraries
    really use (torch; OpenMP and BLAS as threadpoolctl finds them loaded)."""
    import torch
    from threadpoolctl import threadpool_info

    env = {k: os.environ.get(k) for k in (*THREAD_VARS, "MALLOC_TRIM_THRESHOLD_")}
    pools = {p["internal_api"]: p["num_threads"] for p in threadpool_info()}
    return {"env": env, "torch": torch.get_num_threads(), "pools": pools}


def test_a_local_cluster_shares_the_cores_and_serves_no_dashboard(monkeypatch, recwarn):
    # Dask's nanny gives every worker one OpenMP/BLAS thread (so torch one) and a malloc
    # setting that slowed --workers 1 by 21% against one process; our workers get their share
    # of the cores, except where the user set a value (OpenBLAS here), and the driver its own
    # environment. Port 8787, Dask's dashboard port, is taken (here, if nobody had it): a
    # scheduler HTTP server there warned "Port 8787 is already in use" on stderr.
    for k in THREAD_VARS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    share = max(1, (os.cpu_count() or 1) // 1)
    taken = socket.socket()
    with contextlib.suppress(OSError):  # else someone else has it
        taken.bind(("127.0.0.1", 8787))
        taken.listen()
    with taken, dask_client(DaskSettings(workers=1)) as c:
        (got,) = c.run(_threads_here).values()
        port = c.scheduler_info()["services"]["dashboard"]
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/info/main/workers.html")
    assert got["env"] == {
        "OMP_NUM_THREADS": str(share),
        "MKL_NUM_THREADS": str(share),
        "OPENBLAS_NUM_THREADS": "1",
        "QUPATH_REFINE_THREADS": str(share),
        "MALLOC_TRIM_THRESHOLD_": None,
    }
    assert got["torch"] == share and got["pools"]["openmp"] == share
    assert got["pools"]["openblas"] == 1
    assert port != 8787 and not [w for w in recwarn if "8787" in str(w.message)]
    assert {k: os.environ.get(k) for k in THREAD_VARS} == dict.fromkeys(THREAD_VARS) | {
        "OPENBLAS_NUM_THREADS": "1"
    }
