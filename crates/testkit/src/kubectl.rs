//! kubectl conveniences on a [`TestServer`]: run and require success, create from a manifest,
//! read an object as JSON, and poll until an object reaches a state or is gone. Every e2e test
//! uses these instead of its own copy.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::apiserver::TestServer;

/// Generous bound for anything a test waits for; a deadline, not a timing assertion.
pub const PATIENCE: Duration = Duration::from_secs(240);

/// How often [`TestServer::wait_for`] looks again.
const POLL: Duration = Duration::from_millis(200);

/// stdout followed by stderr of a finished command, as text.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

impl TestServer {
    /// Runs kubectl, which must succeed; its stdout. Panics with stdout and stderr otherwise.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args).expect("kubectl runs");
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            output_text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs kubectl (with `stdin` fed to it when given), which must fail; its stderr. Panics
    /// with stdout when it succeeds.
    pub fn kubectl_err(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl_stdin(args, stdin).expect("kubectl runs");
        assert!(
            !out.status.success(),
            "kubectl {args:?} unexpectedly succeeded: {}",
            output_text(&out)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `kubectl create -f -` of a manifest (YAML text, or a `serde_json::Value`); (success,
    /// stdout + stderr).
    pub fn create(&self, manifest: impl std::fmt::Display) -> (bool, String) {
        self.kubectl_args_stdin(&["create", "-f", "-"], &manifest.to_string())
    }

    /// `kubectl <args>` with `stdin` fed to it; (success, stdout + stderr).
    pub fn kubectl_args_stdin(&self, args: &[&str], stdin: &str) -> (bool, String) {
        let out = self.kubectl_stdin(args, Some(stdin)).expect("kubectl runs");
        (out.status.success(), output_text(&out))
    }

    /// `kubectl create -f -` that must succeed.
    pub fn create_ok(&self, manifest: impl std::fmt::Display) {
        let manifest = manifest.to_string();
        let (ok, out) = self.create(&manifest);
        assert!(ok, "kubectl create failed: {out}\nmanifest:\n{manifest}");
    }

    /// `kubectl get <kind> <name> -o json`, or `None` when it does not exist. Any other failure
    /// panics.
    pub fn get_json(&self, kind: &str, name: &str) -> Option<Value> {
        self.get_json_in(kind, name, &[])
    }

    /// [`TestServer::get_json`] with extra `kubectl get` arguments (e.g. `-n ns`).
    pub fn get_json_in(&self, kind: &str, name: &str, extra: &[&str]) -> Option<Value> {
        let mut args = vec!["get", kind, name, "-o", "json"];
        args.extend_from_slice(extra);
        let out = self.kubectl(&args).expect("kubectl runs");
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("NotFound") || err.contains("not found"),
                "kubectl get {kind} {name}: {err}"
            );
            return None;
        }
        Some(serde_json::from_slice(&out.stdout).expect("kubectl prints JSON"))
    }

    /// Polls `kind/name` until `done` holds (within [`PATIENCE`]); the object then. Panics with
    /// the last state seen otherwise; `what` names the awaited state in that message.
    pub fn wait_for(
        &self,
        kind: &str,
        name: &str,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        self.wait_for_in(kind, name, &[], what, done)
    }

    /// [`TestServer::wait_for`] with extra `kubectl get` arguments (e.g. `-n ns`).
    pub fn wait_for_in(
        &self,
        kind: &str,
        name: &str,
        extra: &[&str],
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + PATIENCE;
        let mut last = None;
        while Instant::now() < deadline {
            if let Some(o) = self.get_json_in(kind, name, extra) {
                if done(&o) {
                    return o;
                }
                last = Some(o);
            }
            std::thread::sleep(POLL);
        }
        panic!("{kind}/{name} never became {what}; last seen: {last:#?}");
    }

    /// Events about the object named `name` (any kind), as `kubectl get events -o json` lists
    /// them.
    pub fn events_about(&self, name: &str) -> Vec<Value> {
        let all: Value = serde_json::from_str(&self.kubectl_ok(&["get", "events", "-o", "json"]))
            .expect("kubectl prints JSON");
        all["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["involvedObject"]["name"] == name)
            .cloned()
            .collect()
    }

    /// Polls `kubectl logs POD -c CONTAINER` until it contains `text` (within [`PATIENCE`]);
    /// the log then.
    pub fn wait_for_log(&self, pod: &str, container: &str, text: &str) -> String {
        self.wait_for_log_in(pod, container, &[], text)
    }

    /// [`TestServer::wait_for_log`] with extra `kubectl logs` arguments (e.g. `-n ns`).
    pub fn wait_for_log_in(
        &self,
        pod: &str,
        container: &str,
        extra: &[&str],
        text: &str,
    ) -> String {
        let mut args = vec!["logs", pod, "-c", container];
        args.extend_from_slice(extra);
        let mut last = String::new();
        eventually(
            &format!("the log of {pod}/{container} shows {text:?}"),
            || {
                let out = self.kubectl(&args).expect("kubectl runs");
                last = output_text(&out);
                (out.status.success() && last.contains(text))
                    .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
            },
        )
        .unwrap_or_else(|| {
            panic!("the log of {pod}/{container} never showed {text:?}; last: {last}")
        })
    }

    /// Polls the events about `name` until one satisfies `want` (within [`PATIENCE`]); that
    /// event. Panics with the events seen otherwise.
    pub fn wait_for_event(&self, name: &str, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        eventually(&format!("an event about {name}: {what}"), || {
            self.events_about(name).into_iter().find(|e| want(e))
        })
        .unwrap_or_else(|| {
            panic!(
                "no event about {name} was {what}; events: {:#?}",
                self.events_about(name)
            )
        })
    }

    /// The pods matching label selector `selector` (`kubectl get pods -l`), as JSON objects.
    pub fn pods_with(&self, selector: &str) -> Vec<Value> {
        let out = self.kubectl_ok(&["get", "pods", "-l", selector, "-o", "json"]);
        let list: Value = serde_json::from_str(&out).expect("kubectl prints JSON");
        list["items"].as_array().cloned().unwrap_or_default()
    }

    /// The objects of `kind` matching the label `selector`, as `kubectl get -o json` lists them.
    pub fn list_with(&self, kind: &str, selector: &str) -> Vec<Value> {
        let out = self.kubectl_ok(&["get", kind, "-l", selector, "-o", "json"]);
        let list: Value = serde_json::from_str(&out).expect("kubectl prints JSON");
        list["items"].as_array().cloned().unwrap_or_default()
    }

    /// Polls the objects of `kind` matching `selector` until `done` holds for the list (within
    /// [`PATIENCE`]); the list then. Panics with the last list seen otherwise.
    pub fn wait_for_list(
        &self,
        kind: &str,
        selector: &str,
        what: &str,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let mut last = Vec::new();
        eventually(&format!("the {kind} {selector} are {what}"), || {
            last = self.list_with(kind, selector);
            done(&last).then(|| last.clone())
        })
        .unwrap_or_else(|| {
            panic!("the {kind} {selector} never became {what}; last seen: {last:#?}")
        })
    }

    /// Polls the pods matching `selector` until `done` holds for the list (within
    /// [`PATIENCE`]); the pods then. Panics with the last list seen otherwise.
    pub fn wait_for_pods(
        &self,
        selector: &str,
        what: &str,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let mut last = Vec::new();
        eventually(&format!("the pods {selector} are {what}"), || {
            last = self.pods_with(selector);
            done(&last).then(|| last.clone())
        })
        .unwrap_or_else(|| panic!("the pods {selector} never became {what}; last seen: {last:#?}"))
    }

    /// `kubectl rollout status KIND/NAME` within [`PATIENCE`], which must succeed; its output.
    pub fn rollout_status(&self, target: &str) -> String {
        let timeout = format!("--timeout={}s", PATIENCE.as_secs());
        self.kubectl_ok(&["rollout", "status", target, &timeout])
    }

    /// Polls until `kind/name` no longer exists (within [`PATIENCE`]).
    pub fn wait_gone(&self, kind: &str, name: &str) {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if self.get_json(kind, name).is_none() {
                return;
            }
            std::thread::sleep(POLL);
        }
        panic!(
            "{kind}/{name} was never removed: {:#?}",
            self.get_json(kind, name)
        );
    }
}

/// Calls `probe` every [`POLL`] until it returns something (within [`PATIENCE`]); that, or
/// `None` when time ran out (`what` names the awaited state for the caller's message).
pub fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            eprintln!("gave up waiting until {what}");
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// Waits until this machine's clock is past the whole second of `timestamp` (an RFC 3339 time
/// the server wrote on this host, such as a `creationTimestamp`), so the next object the server
/// stamps gets a later second. It waits on the clock, for exactly as long as needed, not for a
/// guessed duration.
pub fn wait_past_second(timestamp: &str) {
    let stamped: jiff::Timestamp = timestamp
        .parse()
        .unwrap_or_else(|e| panic!("{timestamp:?} is not an RFC 3339 time: {e}"));
    let next = jiff::Timestamp::from_second(stamped.as_second() + 1).expect("a representable time");
    loop {
        let now = jiff::Timestamp::now();
        if now >= next {
            return;
        }
        let left = next.duration_since(now);
        std::thread::sleep(
            std::time::Duration::try_from(left)
                .unwrap_or(POLL)
                .min(POLL),
        );
    }
}

/// Whether a pod is Running with its first container running.
pub fn pod_running(pod: &Value) -> bool {
    pod["status"]["phase"] == "Running"
        && pod["status"]["containerStatuses"][0]["state"]["running"].is_object()
}

/// Whether a pod (as JSON) has its `Ready` condition True and is not being deleted.
pub fn pod_ready(pod: &Value) -> bool {
    pod["metadata"]["deletionTimestamp"].is_null()
        && pod["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// The column headers of a `kubectl get` table (its first line, split on whitespace).
pub fn table_header(table: &str) -> Vec<String> {
    table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}
