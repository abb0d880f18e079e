"""The CLI never shows an energy figure without its meter, and marks estimates."""

from rich.console import Console

from nas.cli.render import front_csv, trial_table


def _text(renderable) -> str:
    c = Console(record=True, width=200)
    c.print(renderable)
    return c.export_text()


def test_trial_table_names_meter_and_marks_estimates(make_result):
    est = _text(trial_table(make_result(meter="estimate", is_estimate=True)))
    assert "meter estimate, ESTIMATE" in est
    meas = _text(trial_table(make_result(meter="nvml-counter", is_estimate=False)))
    assert "meter nvml-counter, measured" in meas and "ESTIMATE" not in meas


def test_front_csv_has_meter_and_estimate_columns():
    class V:
        number = 1

        def values(self):
            return {"number": 1, "accuracy": 0.9, "energy_per_sample_j": 1e-3, "meter": "estimate",
                    "is_estimate": True}

    out = front_csv([V()])
    header = out.splitlines()[0].split(",")
    assert "meter" in header and "is_estimate" in header
