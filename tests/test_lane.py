"""The measurement lane: no training step overlaps a measurement, across processes, and a
measurement waiting behind busy trainers gets in within a few steps (no starvation)."""

import multiprocessing as mp
import time

from evaluators.lane import MeasurementLane


def _trainer(directory, stop_at, out_q, step_s):
    lane = MeasurementLane("cpu", directory)
    lane.enter_shared()
    steps = []
    while time.time() < stop_at:
        t0 = time.time()
        time.sleep(step_s)  # a "training step" on the shared device
        steps.append((t0, time.time()))
        lane.step_boundary()
    lane.leave_shared()
    lane.close()
    out_q.put(steps)


def _measurer(directory, start_at, out_q, hold_s, n):
    lane = MeasurementLane("cpu", directory)
    time.sleep(max(0.0, start_at - time.time()))
    spans = []
    for _ in range(n):
        asked = time.time()
        with lane.exclusive():
            t0 = time.time()
            time.sleep(hold_s)
            spans.append((asked, t0, time.time()))
        time.sleep(0.05)
    lane.close()
    out_q.put(spans)


def test_measurements_are_exclusive_and_do_not_starve(tmp_path):
    ctx = mp.get_context("spawn")
    q_train, q_meas = ctx.Queue(), ctx.Queue()
    now = time.time()
    trainers = [ctx.Process(target=_trainer, args=(str(tmp_path), now + 3.0, q_train, 0.02)) for _ in range(3)]
    measurer = ctx.Process(target=_measurer, args=(str(tmp_path), now + 0.5, q_meas, 0.3, 3))
    for p in [*trainers, measurer]:
        p.start()
    steps = [s for _ in trainers for s in q_train.get(timeout=30)]
    spans = q_meas.get(timeout=30)
    for p in [*trainers, measurer]:
        p.join(timeout=30)
    assert len(spans) == 3 and len(steps) > 30
    for asked, t0, t1 in spans:
        # exclusive: no training step ran while the measurement held the lane
        overlapping = [s for s in steps if s[0] < t1 and s[1] > t0]
        assert not overlapping, (t0, t1, overlapping[:3])
        # fair: it waited at most about one step of each trainer, not until they finished
        assert t0 - asked < 0.5
    # trainers resumed after each measurement
    assert any(s[0] > spans[-1][2] for s in steps)


def test_dead_holder_releases_the_lane(tmp_path):
    ctx = mp.get_context("spawn")
    p = ctx.Process(target=_hold_and_die, args=(str(tmp_path),))
    p.start()
    p.join(timeout=30)
    lane = MeasurementLane("cpu", tmp_path)
    t0 = time.time()
    with lane.exclusive():
        pass
    assert time.time() - t0 < 1.0
    lane.close()


def _hold_and_die(directory):
    import os

    lane = MeasurementLane("cpu", directory)
    lane.enter_shared()
    os._exit(0)  # no cleanup: the kernel drops the flock


def _member(directory, mode, ready, stop_at):
    """A lane member that is either blocked in the lane (waits for a shared hold) or burns CPU while
    ignoring the lane (a phase that bypassed it)."""
    lane = MeasurementLane("cpu", directory)
    ready.set()
    if mode == "waiting":
        lane.enter_shared()
        lane.leave_shared()
    else:
        x = 0
        while time.time() < stop_at:
            x += 1
    lane.close()


def _hold_with(tmp_path, mode):
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    me = MeasurementLane("cpu", str(tmp_path))
    if mode == "waiting":
        with me.exclusive():  # taken first, so the member waits in the lane
            p = ctx.Process(target=_member, args=(str(tmp_path), mode, ready, 0))
            p.start()
            ready.wait(30)
            time.sleep(0.5)
        with me.exclusive() as hold:
            time.sleep(0.6)
    else:
        p = ctx.Process(target=_member, args=(str(tmp_path), mode, ready, time.time() + 8))
        p.start()
        ready.wait(30)
        time.sleep(0.3)
        with me.exclusive() as hold:
            time.sleep(0.6)
    p.join(timeout=30)
    me.close()
    return hold, p.pid


def test_work_that_bypasses_the_lane_is_observed(tmp_path):
    """Regression: exclusivity was asserted, never observed."""
    hold, pid = _hold_with(tmp_path, "busy")
    assert hold.shared and pid in hold.other_pids and hold.others_cpu_s > 0.3
    use = hold.device_use()
    assert use["shared"] is True and "lane" in use["observed_by"] and pid in use["other_pids"]


def test_members_waiting_in_the_lane_do_not_count_as_sharing(tmp_path):
    hold, _ = _hold_with(tmp_path, "waiting")
    assert hold.others_cpu_s is not None and not hold.shared


def test_dead_members_are_forgotten(tmp_path):
    lane = MeasurementLane("cpu", str(tmp_path))
    (tmp_path / "cpu.members" / "999999999.0").touch()  # a member killed before it could unregister
    assert lane.other_members() == []
    assert not (tmp_path / "cpu.members" / "999999999.0").exists()
    lane.close()
    assert list((tmp_path / "cpu.members").iterdir()) == []


def test_a_measurement_that_always_saw_other_work_fails_retryable(monkeypatch, tmp_path):
    import pytest
    import torch

    from evaluators import serving
    from evaluators.lane import Hold
    from evaluators.meters import make_meter
    from nas.config import Candidate, MeasureConfig
    from nas.errors import TrialFailedError
    from nas.models import build

    monkeypatch.setenv("NAS_LANE_DIR", str(tmp_path))
    calls = []

    class BusyLane(MeasurementLane):
        def _observe(self, hold: Hold) -> None:
            calls.append(1)
            hold.others_cpu_s, hold.other_pids = hold.held_s, (4242,)

    cand = Candidate(n_layers=1, d_model=16, n_heads=2, d_ffn=32, max_len=16)
    cfg = MeasureConfig(meter="estimate", window_s=0.02, n_windows=1, idle_s=0.0, warmup_iters=1,
                        batch_size=2, seq_len=8)
    torch.manual_seed(0)
    model = build(cand, vocab_size=30, num_labels=2)
    lane = BusyLane("cpu")
    with pytest.raises(TrialFailedError, match="other work ran on cpu") as e:
        serving.measure_serving(model, cand, cfg, vocab_size=30, device="cpu", meter=make_meter("estimate", cfg),
                                lane=lane)
    assert e.value.retryable and len(calls) == serving.MEASURE_ATTEMPTS
    lane.close()


def _placed_lane(directory, visible):
    """The lane of the trial Ray placed on fake GPU ``visible`` (the fake NVML comes from the environment)."""
    import os

    from evaluators.placement import place

    os.environ["CUDA_VISIBLE_DEVICES"] = visible
    return MeasurementLane(place("auto", ray_gpu_ids=[visible]).lane_key, directory)


def _gpu_trainer(directory, visible, ready, out_q):
    lane = _placed_lane(directory, visible)
    lane.enter_shared()
    ready.wait(timeout=120)  # every process placed (imports done): the clock starts together
    stop_at, steps = time.time() + 2.5, []
    while time.time() < stop_at:
        t0 = time.time()
        time.sleep(0.02)
        steps.append((t0, time.time()))
        lane.step_boundary()
    lane.close()
    out_q.put(("train", lane.device_key, steps))


def _gpu_measurer(directory, visible, ready, out_q):
    lane = _placed_lane(directory, visible)
    ready.wait(timeout=120)
    time.sleep(0.5)
    spans = []
    for _ in range(2):
        with lane.exclusive():
            t0 = time.time()
            time.sleep(0.4)
            spans.append((t0, time.time()))
        time.sleep(0.1)
    lane.close()
    out_q.put(("measure", lane.device_key, spans))


def test_lanes_are_per_device_measuring_on_one_gpu_overlaps_training_on_another(tmp_path, monkeypatch):
    """Two fake GPUs: a measurement on GPU 0 never overlaps training on GPU 0, and overlaps GPU 1's."""
    from tests.fakegpu.nas_fake_gpu import uuid_of
    from tests.test_multi_gpu import fake_gpu_env

    for k, v in fake_gpu_env(tmp_path, n=2).items():
        monkeypatch.setenv(k, v)  # spawned children start with the fake NVML
    ctx = mp.get_context("spawn")
    q, ready = ctx.Queue(), ctx.Barrier(3)
    procs = [ctx.Process(target=_gpu_trainer, args=(str(tmp_path), v, ready, q)) for v in ("0", "1")]
    procs.append(ctx.Process(target=_gpu_measurer, args=(str(tmp_path), "0", ready, q)))
    for p in procs:
        p.start()
    got = [q.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    lane_a, lane_b = f"gpu-{uuid_of('node0', 0)}", f"gpu-{uuid_of('node0', 1)}"
    spans = [s for role, k, s in got if role == "measure" and k == lane_a][0]
    steps = {k: s for role, k, s in got if role == "train"}
    assert set(steps) == {lane_a, lane_b} and len(spans) == 2
    for t0, t1 in spans:
        assert not [s for s in steps[lane_a] if s[0] < t1 and s[1] > t0]  # its own device waits
        assert len([s for s in steps[lane_b] if t0 <= s[0] and s[1] <= t1]) >= 5  # the other trains on
