//! The `exec` probe (the kubelet's `pkg/probe/exec` over CRI `ExecSync`): the command runs in
//! the container; exit code 0 is a success, any other a failure with its output, a command
//! over the timeout is killed and fails as `command "…" timed out`.

use std::time::Duration;

use imc_runtime::{ExecRequest, RuntimeError};

use super::{MAX_OUTPUT, Outcome, Target};

/// Runs `command` in the target container.
pub(super) async fn probe(target: &Target, command: &[String], timeout: Duration) -> Outcome {
    let Some(exec) = &target.exec else {
        return Outcome::Error("the container is not running".into());
    };
    let request = ExecRequest {
        command: command.to_vec(),
        timeout: Some(timeout),
        output_limit: MAX_OUTPUT,
    };
    match exec.exec(request).await {
        Ok(out) => {
            let output = String::from_utf8_lossy(&out.output).into_owned();
            if out.exit_code == 0 {
                Outcome::Success(output)
            } else {
                Outcome::Failure(output)
            }
        }
        Err(RuntimeError::ExecTimeout { .. }) => {
            Outcome::Failure(format!("command {:?} timed out", command.join(" ")))
        }
        Err(e) => Outcome::Error(e.to_string()),
    }
}
