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
