"""A tuned run's trials in MLflow: one child run per trial under the run's own MLflow run
(:class:`~shardflow.pipelines.interface.tracking.MLflowRun`, found by its ``shardflow.run_id``
tag), with the trial's parameters, its value, rounds and time, and its state as a tag; the
parent run gets each family's best value (``tune.<family>.best.<metric>``)."""

from __future__ import annotations

#: Tags of a trial's child run: its study and number (a trial logged once is not logged again).
STUDY_TAG, TRIAL_TAG, STATE_TAG = "shardflow.study", "shardflow.trial", "shardflow.trial_state"

#: How a trial's state ends its child run.
STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


def log_trials(config, run_dir, record: dict) -> int:
    """Log the study of ``record`` (``tune.json``) as child runs of the run's MLflow run;
    returns how many trials were logged now (those logged by an earlier call are skipped).

    Parameters
    ----------
    config : MLflowConfig
        ``tracking.mlflow``.
    run_dir : path
        The tuned run.
    record : dict
        One study's record (:func:`shardflow.pipelines.tuning.files.read_records`).
    """
    from mlflow.entities import Metric, Param, RunTag

    from shardflow.pipelines.interface.tracking import MLflowRun, metric_name

    tracked = MLflowRun(config, run_dir)
    client = tracked.client
    try:
        children = client.search_runs(
            [tracked.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{tracked.run_id}' "
            f"and tags.`{STUDY_TAG}` = '{record['study']}'",
            max_results=50_000,
        )
        logged = {run.data.tags.get(TRIAL_TAG) for run in children}
        metric = metric_name(f"validation.{record['metric']}")
        count = 0
        for row in record["history"]:
            if str(row["trial"]) in logged or row["state"] not in STATUS:
                continue
            tags = {
                "mlflow.parentRunId": tracked.run_id,
                STUDY_TAG: record["study"],
                TRIAL_TAG: str(row["trial"]),
                STATE_TAG: row["state"],
            }
            child = client.create_run(
                tracked.experiment_id, run_name=f"{record['family']} trial {row['trial']}", tags=tags
            ).info.run_id
            now = _millis()
            values = {metric: row["value"], f"{metric}.reached": row["reached"], "rounds": row["rounds"],
                      "seconds": row["seconds"]}  # fmt: skip
            client.log_batch(
                child,
                metrics=[Metric(k, float(v), now, 0) for k, v in values.items() if v is not None],
                params=[Param(metric_name(k), str(v)) for k, v in row["params"].items()],
                tags=[RunTag("shardflow.worker", str(row.get("worker") or ""))],
            )
            client.set_terminated(child, status=STATUS[row["state"]])
            count += 1
        best = record.get("best") or {}
        if best:
            family = record["family"]
            client.log_batch(
                tracked.run_id,
                metrics=[
                    Metric(metric_name(f"tune.{family}.best.{record['metric']}"), float(best["value"]), _millis(), 0)
                ],
                tags=[
                    RunTag(f"shardflow.tune.{family}.study", record["study"]),
                    RunTag(f"shardflow.tune.{family}.best_trial", str(best["trial"])),
                ],
            )
    finally:
        tracked.finish()
    return count


def _millis() -> int:
    import time

    return int(time.time() * 1000)
