//! `batch/v1` Job: upstream defaults (completions and parallelism 1 unless given, backoffLimit
//! 6, NonIndexed), a generated selector (`batch.kubernetes.io/controller-uid`) and the
//! `job-name` / `controller-uid` labels on the template unless `manualSelector`, validation
//! (template `restartPolicy` OnFailure or Never, selector and template immutable), the real
//! schema, kubectl's columns and the `status` subresource. The Job controller runs it.

use k8s_openapi::api::batch::v1::Job;
use serde_json::{Value, json};

use super::Strategy;
use super::deployment::wide_columns;
use super::workload::{self, int_at};
use crate::clock;
use crate::error::Cause;
use crate::field::{Path, invalid};
use crate::resources::{Cell, Column, ResourceDef, age_column};
use crate::schema::Schema;

/// The label of a Job's pods naming the Job's uid (and its legacy spelling).
pub const CONTROLLER_UID: [&str; 2] = ["batch.kubernetes.io/controller-uid", "controller-uid"];
/// The label of a Job's pods naming the Job (and its legacy spelling).
pub const JOB_NAME: [&str; 2] = ["batch.kubernetes.io/job-name", "job-name"];

/// The Job strategy.
pub struct JobStrategy;

impl Strategy for JobStrategy {
    fn default(&self, obj: &mut Value) {
        let parallelism = obj
            .pointer("/spec/parallelism")
            .is_some_and(|v| !v.is_null());
        let completions = obj
            .pointer("/spec/completions")
            .is_some_and(|v| !v.is_null());
        if !parallelism && !completions {
            workload::default_spec(obj, "completions", json!(1));
        }
        workload::default_spec(obj, "parallelism", json!(1));
        workload::default_spec(obj, "backoffLimit", json!(6));
        workload::default_spec(obj, "completionMode", json!("NonIndexed"));
        workload::default_spec(obj, "suspend", json!(false));
        workload::default_spec(obj, "manualSelector", Value::Null);
        workload::default_spec(obj, "podReplacementPolicy", json!("TerminatingOrFailed"));
        if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut)
            && spec.get("manualSelector") == Some(&Value::Null)
        {
            spec.remove("manualSelector");
        }
        workload::default_template(obj);
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        obj["status"] = json!({});
        let manual = obj.pointer("/spec/manualSelector") == Some(&json!(true));
        if manual {
            return;
        }
        let uid = obj.pointer("/metadata/uid").cloned().unwrap_or(Value::Null);
        let name = obj
            .pointer("/metadata/name")
            .cloned()
            .unwrap_or(Value::Null);
        if obj.pointer("/spec/selector").is_none_or(Value::is_null) {
            obj["spec"]["selector"] = json!({"matchLabels": {CONTROLLER_UID[0]: uid}});
        }
        if let Some(t) = obj
            .pointer_mut("/spec/template")
            .and_then(Value::as_object_mut)
        {
            let meta = t.entry("metadata").or_insert_with(|| json!({}));
            if let Some(meta) = meta.as_object_mut() {
                let labels = meta.entry("labels").or_insert_with(|| json!({}));
                if let Some(labels) = labels.as_object_mut() {
                    for k in CONTROLLER_UID {
                        labels.insert(k.into(), uid.clone());
                    }
                    for k in JOB_NAME {
                        labels.insert(k.into(), name.clone());
                    }
                }
            }
        }
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut causes = workload::validate_selector_and_template(obj, &["OnFailure", "Never"]);
        let spec = Path::new("spec");
        for f in [
            "parallelism",
            "completions",
            "backoffLimit",
            "ttlSecondsAfterFinished",
        ] {
            if let Some(v) = obj.pointer(&format!("/spec/{f}"))
                && v.as_i64().is_some_and(|n| n < 0)
            {
                causes.push(invalid(
                    &spec.child(f),
                    v,
                    "must be greater than or equal to 0",
                ));
            }
        }
        if let Some(v) = obj.pointer("/spec/activeDeadlineSeconds")
            && v.as_i64().is_some_and(|n| n <= 0)
        {
            causes.push(invalid(
                &spec.child("activeDeadlineSeconds"),
                v,
                "must be greater than 0",
            ));
        }
        causes
    }

    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        let mut causes = workload::selector_immutable(new, old);
        if new.pointer("/spec/template") != old.pointer("/spec/template") {
            causes.push(invalid(
                &Path::new("spec").child("template"),
                new.pointer("/spec/template").unwrap_or(&Value::Null),
                "field is immutable",
            ));
        }
        causes
    }
}

/// Whether the Job has condition `kind` with status True.
fn has_condition(o: &Value, kind: &str) -> bool {
    o.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == kind && c["status"] == "True")
        })
}

/// kubectl's STATUS of a Job.
fn job_status(o: &Value) -> Value {
    let status = if has_condition(o, "Complete") {
        "Complete"
    } else if has_condition(o, "Failed") {
        "Failed"
    } else if o.pointer("/metadata/deletionTimestamp").is_some() {
        "Terminating"
    } else if has_condition(o, "FailureTarget") {
        "FailureTarget"
    } else if has_condition(o, "SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else if has_condition(o, "Suspended") {
        "Suspended"
    } else {
        "Running"
    };
    json!(status)
}

/// kubectl's COMPLETIONS of a Job.
fn job_completions(o: &Value) -> Value {
    let succeeded = int_at(o, "/status/succeeded");
    match o.pointer("/spec/completions").and_then(Value::as_i64) {
        Some(n) => json!(format!("{succeeded}/{n}")),
        None => {
            let parallelism = int_at(o, "/spec/parallelism");
            if parallelism > 1 {
                json!(format!("{succeeded}/1 of {parallelism}"))
            } else {
                json!(format!("{succeeded}/1"))
            }
        }
    }
}

/// kubectl's DURATION of a Job: start to completion, or to now while it runs.
fn job_duration(o: &Value) -> Value {
    let at = |p: &str| {
        o.pointer(p)
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<jiff::Timestamp>().ok())
    };
    let Some(start) = at("/status/startTime") else {
        return json!("");
    };
    let end = at("/status/completionTime").unwrap_or_else(jiff::Timestamp::now);
    json!(clock::human_duration(end.as_second() - start.as_second()))
}

/// `batch/v1` Job.
pub fn def() -> ResourceDef {
    let mut def = ResourceDef::new("batch", "v1", "Job", "jobs", true)
        .with_status()
        .with_strategy(JobStrategy);
    def.categories = vec!["all".into()];
    def.schema = Schema::of::<Job>();
    def.columns = vec![
        Column::new("Status", Cell::Func(job_status)),
        Column::new("Completions", Cell::Func(job_completions)),
        Column::new("Duration", Cell::Func(job_duration)),
        age_column(),
    ];
    def.columns.extend(wide_columns());
    def
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_job_gets_its_selector_labels_and_defaults() {
        let mut job = json!({"metadata": {"name": "pi", "uid": "u-1"}, "spec": {"template": {
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i:1"}]}}}});
        JobStrategy.default(&mut job);
        JobStrategy.prepare_for_create(&mut job);
        assert_eq!(job["spec"]["completions"], 1);
        assert_eq!(job["spec"]["parallelism"], 1);
        assert_eq!(job["spec"]["backoffLimit"], 6);
        assert_eq!(
            job["spec"]["selector"],
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": "u-1"}})
        );
        assert_eq!(
            job["spec"]["template"]["metadata"]["labels"]["job-name"],
            "pi"
        );
        assert!(
            JobStrategy.validate(&job).is_empty(),
            "{:?}",
            JobStrategy.validate(&job)
        );
        job["spec"]["template"]["spec"]["restartPolicy"] = json!("Always");
        assert_eq!(
            JobStrategy.validate(&job)[0].field,
            "spec.template.spec.restartPolicy"
        );
    }

    #[test]
    fn columns_read_like_kubectl() {
        // (case, job, STATUS, COMPLETIONS)
        let rows = [
            (
                "running",
                json!({"spec": {"completions": 3}, "status": {"succeeded": 1}}),
                "Running",
                "1/3",
            ),
            (
                "complete",
                json!({"spec": {"completions": 1}, "status": {"succeeded": 1,
                    "conditions": [{"type": "Complete", "status": "True"}]}}),
                "Complete",
                "1/1",
            ),
            (
                "failed",
                json!({"spec": {"parallelism": 2}, "status": {
                    "conditions": [{"type": "Failed", "status": "True"}]}}),
                "Failed",
                "0/1 of 2",
            ),
        ];
        for (case, job, status, completions) in rows {
            assert_eq!(job_status(&job), json!(status), "{case}");
            assert_eq!(job_completions(&job), json!(completions), "{case}");
        }
    }
}
