//! `batch/v1` CronJob: upstream defaults (concurrencyPolicy Allow, not suspended, 3 successful
//! and 1 failed Jobs kept, the job template's pod template defaulted as a Pod's), validation in
//! kube's words (the schedule parsed as robfig/cron's standard parser does, `TZ=` / `CRON_TZ=`
//! refused in favour of `timeZone`, unknown time zones refused, names of at most 52
//! characters, the job template validated as a Job's), the real schema, kubectl's columns and
//! the `status` subresource. The CronJob controller (imc-controllers) starts the Jobs.

use imc_api::cron_schedule::{Schedule, time_zone};
use k8s_openapi::api::batch::v1::CronJob;
use serde_json::{Value, json};

use super::Strategy;
use super::workload;
use crate::clock;
use crate::error::Cause;
use crate::field::{Path, invalid, not_supported, required};
use crate::resources::{Cell, Column, ResourceDef, age_column};
use crate::schema::Schema;

/// The longest CronJob name: its Jobs add `-<minutes since the epoch>` (11 characters) and
/// must stay a DNS-1035 label.
pub const MAX_NAME: usize = 52;

/// The CronJob strategy.
pub struct CronJobStrategy;

/// The job template's spec as a Job's, so the workload rules apply to it.
fn as_job(obj: &Value) -> Value {
    json!({"spec": obj.pointer("/spec/jobTemplate/spec").cloned().unwrap_or(json!({}))})
}

impl Strategy for CronJobStrategy {
    fn default(&self, obj: &mut Value) {
        workload::default_spec(obj, "concurrencyPolicy", json!("Allow"));
        if obj.pointer("/spec/concurrencyPolicy") == Some(&json!("")) {
            obj["spec"]["concurrencyPolicy"] = json!("Allow");
        }
        workload::default_spec(obj, "suspend", json!(false));
        workload::default_spec(obj, "successfulJobsHistoryLimit", json!(3));
        workload::default_spec(obj, "failedJobsHistoryLimit", json!(1));
        if let Some(job_spec) = obj.pointer_mut("/spec/jobTemplate/spec") {
            let mut job = json!({"spec": job_spec.take()});
            workload::default_template(&mut job);
            *job_spec = job["spec"].take();
        }
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        obj["status"] = json!({});
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut causes = Vec::new();
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        if name.len() > MAX_NAME {
            causes.push(invalid(
                &Path::new("metadata").child("name"),
                &json!(name),
                "must be no more than 52 characters",
            ));
        }
        let spec = Path::new("spec");
        let tz = obj.pointer("/spec/timeZone").and_then(Value::as_str);
        match obj.pointer("/spec/schedule").and_then(Value::as_str) {
            None | Some("") => causes.push(required(&spec.child("schedule"), "")),
            Some(s) => {
                if let Err(e) = Schedule::parse(s, jiff::tz::TimeZone::UTC) {
                    causes.push(invalid(&spec.child("schedule"), &json!(s), &e.0));
                }
                if s.contains("TZ") {
                    causes.push(invalid(
                        &spec.child("schedule"),
                        &json!(s),
                        "cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
                    ));
                }
            }
        }
        if obj.pointer("/spec/timeZone").is_some_and(|v| !v.is_null())
            && let Err(e) = time_zone(tz)
        {
            causes.push(invalid(
                &spec.child("timeZone"),
                obj.pointer("/spec/timeZone").unwrap_or(&Value::Null),
                &e.0,
            ));
        }
        for f in [
            "startingDeadlineSeconds",
            "successfulJobsHistoryLimit",
            "failedJobsHistoryLimit",
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
        match obj.pointer("/spec/concurrencyPolicy") {
            None | Some(Value::Null) => {
                causes.push(required(&spec.child("concurrencyPolicy"), ""));
            }
            Some(p) if ["Allow", "Forbid", "Replace"].iter().any(|v| p == v) => {}
            Some(p) => causes.push(not_supported(
                &spec.child("concurrencyPolicy"),
                p,
                &["Allow", "Forbid", "Replace"],
            )),
        }
        let job = as_job(obj);
        causes.extend(
            workload::validate_template(&job, &["OnFailure", "Never"])
                .into_iter()
                .map(|mut c| {
                    c.field = c.field.replacen("spec.", "spec.jobTemplate.spec.", 1);
                    c
                }),
        );
        causes
    }
}

/// A RFC 3339 time at `path` shown as kubectl's age, or `<none>`.
fn since(o: &Value, path: &str) -> Value {
    match o.pointer(path).and_then(Value::as_str) {
        Some(t) => json!(clock::age(Some(t))),
        None => json!("<none>"),
    }
}

/// `apps/v1` CronJob's columns read the job template's pod template.
fn template_field(o: &Value, field: &str) -> Value {
    let names: Vec<&str> = o
        .pointer("/spec/jobTemplate/spec/template/spec/containers")
        .and_then(Value::as_array)
        .map(|cs| cs.iter().filter_map(|c| c[field].as_str()).collect())
        .unwrap_or_default();
    json!(names.join(","))
}

/// `batch/v1` CronJob.
pub fn def() -> ResourceDef {
    let mut def = ResourceDef::new("batch", "v1", "CronJob", "cronjobs", true)
        .short(&["cj"])
        .with_status()
        .with_strategy(CronJobStrategy);
    def.categories = vec!["all".into()];
    def.schema = Schema::of::<CronJob>();
    let mut active = Column::new("Active", Cell::Count(".status.active".into()));
    active.type_ = "integer".into();
    def.columns = vec![
        Column::new("Schedule", Cell::Path(".spec.schedule".into())),
        Column::new(
            "Timezone",
            Cell::Func(|o| crate::resources::none_if_missing(o, ".spec.timeZone")),
        ),
        Column::new(
            "Suspend",
            Cell::Func(
                |o| match o.pointer("/spec/suspend").and_then(Value::as_bool) {
                    Some(true) => json!("True"),
                    Some(false) => json!("False"),
                    None => json!("<unset>"),
                },
            ),
        ),
        active,
        Column::new(
            "Last Schedule",
            Cell::Func(|o| since(o, "/status/lastScheduleTime")),
        ),
        age_column(),
        Column::new("Containers", Cell::Func(|o| template_field(o, "name"))).wide(),
        Column::new("Images", Cell::Func(|o| template_field(o, "image"))).wide(),
        Column::new(
            "Selector",
            Cell::Func(|o| match o.pointer("/spec/jobTemplate/spec/selector") {
                Some(s) if !s.is_null() => json!(workload::selector_string(s)),
                _ => json!("<none>"),
            }),
        )
        .wide(),
    ];
    def
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cron_job(schedule: &str) -> Value {
        json!({"metadata": {"name": "tick"}, "spec": {"schedule": schedule,
            "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "OnFailure",
                "containers": [{"name": "c", "image": "i:1"}]}}}}}})
    }

    #[test]
    fn defaults_are_upstreams() {
        let mut c = cron_job("* * * * *");
        CronJobStrategy.default(&mut c);
        assert_eq!(c["spec"]["concurrencyPolicy"], "Allow");
        assert_eq!(c["spec"]["suspend"], false);
        assert_eq!(c["spec"]["successfulJobsHistoryLimit"], 3);
        assert_eq!(c["spec"]["failedJobsHistoryLimit"], 1);
        assert_eq!(
            c["spec"]["jobTemplate"]["spec"]["template"]["spec"]["dnsPolicy"],
            "ClusterFirst"
        );
        assert!(
            CronJobStrategy.validate(&c).is_empty(),
            "{:?}",
            CronJobStrategy.validate(&c)
        );
    }

    /// (case, change, field, message)
    type Row = (&'static str, fn(&mut Value), &'static str, &'static str);

    #[test]
    fn bad_cron_jobs_are_refused_in_kubes_words() {
        // (case, change, field, message)
        let rows: [Row; 8] = [
            (
                "unparseable",
                |c| c["spec"]["schedule"] = json!("* * *"),
                "spec.schedule",
                "Invalid value: \"* * *\": expected exactly 5 fields, found 3: [* * *]",
            ),
            (
                "CRON_TZ",
                |c| c["spec"]["schedule"] = json!("CRON_TZ=UTC * * * * *"),
                "spec.schedule",
                "cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
            ),
            (
                "unknown time zone",
                |c| c["spec"]["timeZone"] = json!("Mars/Olympus"),
                "spec.timeZone",
                "Invalid value: \"Mars/Olympus\": unknown time zone Mars/Olympus",
            ),
            (
                "missing schedule",
                |c| c["spec"]["schedule"] = json!(""),
                "spec.schedule",
                "Required value",
            ),
            (
                "long name",
                |c| c["metadata"]["name"] = json!("x".repeat(53)),
                "metadata.name",
                "must be no more than 52 characters",
            ),
            (
                "policy",
                |c| c["spec"]["concurrencyPolicy"] = json!("Sometimes"),
                "spec.concurrencyPolicy",
                "supported values: \"Allow\", \"Forbid\", \"Replace\"",
            ),
            (
                "restart always",
                |c| {
                    c["spec"]["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"] =
                        json!("Always");
                },
                "spec.jobTemplate.spec.template.spec.restartPolicy",
                "Unsupported value: \"Always\"",
            ),
            (
                "negative deadline",
                |c| c["spec"]["startingDeadlineSeconds"] = json!(-1),
                "spec.startingDeadlineSeconds",
                "must be greater than or equal to 0",
            ),
        ];
        for (case, change, field, message) in rows {
            let mut c = cron_job("*/5 * * * *");
            change(&mut c);
            CronJobStrategy.default(&mut c);
            let causes = CronJobStrategy.validate(&c);
            assert!(
                causes
                    .iter()
                    .any(|c| c.field == field && c.message.contains(message)),
                "{case}: {causes:?}"
            );
        }
    }
}
