//! Container lifecycle hooks (the kubelet's `lifecycle` handler runner): `postStart` runs right
//! after the container's process started (the container counts as running only once it
//! succeeded; a failure kills the container), `preStop` runs before the stop signal within the
//! grace period. Hooks are `exec` (in the container, no timeout but the caller's), `httpGet`
//! (any answer will do) or `sleep`. The failure messages are the kubelet's; its events say only
//! `PostStartHook failed` / `PreStop hook failed`, so that no output of the hook leaks into
//! events.

use imc_runtime::ExecRequest;

use super::prober::action::{Action, Hook};
use super::prober::{MAX_OUTPUT, Target, http};

/// The event note of a failed postStart hook.
pub(super) const POST_START_FAILED: &str = "PostStartHook failed";
/// The event note of a failed preStop hook.
pub(super) const PRE_STOP_FAILED: &str = "PreStop hook failed";

/// Runs `hook` of container `container` of pod `pod` (named as `name_namespace(uid)`); the
/// kubelet's message when it fails.
pub(super) async fn run(
    hook: &Hook,
    target: &Target,
    container: &str,
    pod: &str,
) -> Result<(), String> {
    match hook {
        Hook::Sleep(d) => {
            tokio::time::sleep(*d).await;
            Ok(())
        }
        Hook::Action(Action::Exec { command }) => {
            let failed = |error: String, output: &str| {
                format!(
                    "Exec lifecycle hook ([{}]) for Container {container:?} in Pod {pod:?} failed - error: {error}, message: {output:?}",
                    command.join(" ")
                )
            };
            let Some(exec) = &target.exec else {
                return Err(failed("the container is not running".into(), ""));
            };
            let request = ExecRequest {
                command: command.clone(),
                timeout: None,
                output_limit: MAX_OUTPUT,
            };
            match exec.exec(request).await {
                Ok(out) if out.exit_code == 0 => Ok(()),
                Ok(out) => {
                    let output = String::from_utf8_lossy(&out.output).into_owned();
                    Err(failed(
                        format!(
                            "command '{}' exited with {}: {output}",
                            command.join(" "),
                            out.exit_code
                        ),
                        &output,
                    ))
                }
                Err(e) => Err(failed(e.to_string(), "")),
            }
        }
        Hook::Action(Action::HttpGet(get)) => http::hook(target, get).await.map_err(|e| {
            format!(
                "HTTP lifecycle hook ({}) for Container {container:?} in Pod {pod:?} failed - error: {e}",
                get.path
            )
        }),
        Hook::Action(Action::Invalid(why)) => Err(format!("Cannot run handler: {why}")),
        Hook::Action(other) => Err(format!("Cannot run handler: invalid handler: {other:?}")),
    }
}
