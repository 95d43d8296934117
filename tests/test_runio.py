"""Checkpoints: two runs saving at once in one process (half sets as threads) keep every checkpoint whole;
the run's JSON files stay JSON."""

import concurrent.futures

import jax
import jax.numpy as jnp
import numpy as np

from jaxcryo import runio
from references import strict_json_loads


def _saves(directory, value, n_saves):
    checkpoints = runio.Checkpoints(directory)
    state = {"volume": jnp.full((32, 32, 32), float(value)), "poses": jnp.arange(3000.0).reshape(1000, 3) * value}
    for step in range(n_saves):
        checkpoints.save(state, {"global_step": step})
        if step % 5 == 0:  # the stage switch saves twice at one step
            checkpoints.save(state, {"global_step": step, "switched": True})
    checkpoints.close()
    return state


def test_concurrent_runs_in_threads_keep_whole_checkpoints(tmp_path):
    # without one_save_at_a_time this failed 3 times in 3 ("File exists" under a *.orbax-checkpoint-tmp)
    n_saves = 24
    with runio.one_save_at_a_time(), concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {h: pool.submit(_saves, tmp_path / f"half{h}" / "checkpoints", h, n_saves) for h in (1, 2)}
        states = {h: f.result() for h, f in futures.items()}
    for h, state in states.items():
        directory = tmp_path / f"half{h}" / "checkpoints"
        assert sorted(int(p.name) for p in directory.iterdir()) == [n_saves + 3, n_saves + 4]  # 29 saves, 2 kept
        checkpoints = runio.Checkpoints(directory)
        assert checkpoints.latest_progress() == {"global_step": n_saves - 1}
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
        restored = checkpoints.restore_state(abstract)
        np.testing.assert_array_equal(np.asarray(restored["volume"]), np.full((32, 32, 32), float(h)))
        np.testing.assert_array_equal(np.asarray(restored["poses"]), np.asarray(state["poses"]))
        checkpoints.close()


def test_metrics_and_summary_hold_no_nan(tmp_path):
    # an epoch resumed at its last step has no loss of its own; a correlation of constants is NaN
    record = {"stage": "autodecoding", "epoch": 3, "global_step": 7, "loss": float("nan"),
              "pose_error_median_deg": np.float64(2.5), "fsc": [7.1, float("inf")], "nested": {"x": -np.inf}}
    metrics = runio.MetricsWriter(tmp_path, None)
    metrics.write(record)
    metrics.close()
    runio.write_json(tmp_path / "summary.json", record)
    for text in ((tmp_path / "metrics.jsonl").read_text().splitlines()[0], (tmp_path / "summary.json").read_text()):
        got = strict_json_loads(text)
        assert got["loss"] is None and got["fsc"] == [7.1, None] and got["nested"] == {"x": None}
        assert got["pose_error_median_deg"] == 2.5 and got["epoch"] == 3
