//! The README's walk-through, run as written: every `# command` line of its `console` block is
//! executed in order by one shell, after the set-up's main job (`imc server` on its embedded
//! defaults) has started on a fresh data dir, and each command's output is compared with the lines
//! the README shows under it.
//!
//! The walk-through names fixed places (`/var/lib/imc`, `/var/lib/imc-registry`, `127.0.0.1:5000`,
//! `127.0.0.1:6443`, the pod bridge `imc0`). So that it runs verbatim next to other tests and on
//! a machine that already runs imc, the whole run happens in its own mount and network namespaces
//! (`unshare`): fresh temporary directories are bind-mounted over the two data paths and the
//! ports and bridge are private to it. Nothing else is substituted.
//!
//! Output comparison: a README output that starts with a table header (`NAME ...`) is compared
//! by its header and the first column of each row (ages and generated ids vary); any other
//! output is compared line by line, exactly.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One `# command` of the walk-through and the output the README shows for it.
#[derive(Debug)]
struct Step {
    command: String,
    expected: Vec<String>,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// The steps of the first `console` block under `## Walk-through`.
fn walkthrough(readme: &str) -> Vec<Step> {
    let section = readme
        .split_once("\n## Walk-through\n")
        .expect("README has a `## Walk-through` section")
        .1;
    let block = section
        .split_once("```console\n")
        .expect("the walk-through has a console block")
        .1
        .split_once("\n```")
        .expect("the console block is closed")
        .0;
    let mut steps: Vec<Step> = Vec::new();
    for line in block.lines() {
        if let Some(command) = line.strip_prefix("# ") {
            steps.push(Step {
                command: command.to_owned(),
                expected: Vec::new(),
            });
        } else {
            steps
                .last_mut()
                .expect("the console block starts with a command")
                .expected
                .push(line.to_owned());
        }
    }
    steps
}

/// Whether `actual` is what the README shows (see the module doc for tables).
fn matches(expected: &[String], actual: &[String]) -> bool {
    let is_table = expected.first().is_some_and(|l| l.starts_with("NAME "));
    if !is_table {
        return expected == actual;
    }
    let first = |l: &String| l.split_whitespace().next().map(str::to_owned);
    let columns = |l: &String| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    expected.len() == actual.len()
        && columns(&expected[0]) == columns(&actual[0])
        && expected
            .iter()
            .zip(actual)
            .skip(1)
            .all(|(e, a)| first(e) == first(a))
}

/// The shell script that runs the set-up's server and then every step, recording each step's
/// output in `out/N` and exit status in `rc/N`; it stops at the first failing step.
fn script(steps: &[Step], work: &Path, imc: &Path) -> String {
    let w = work.display();
    let mut s = format!(
        r#"set -u
ip link set lo up
mkdir -p /var/lib/imc /var/lib/imc-registry
mount --bind {w}/imc /var/lib/imc
mount --bind {w}/registry /var/lib/imc-registry
export PATH={bin}:$PATH
stop() {{
  [ -f /var/lib/imc-registry/pid ] && kill "$(cat /var/lib/imc-registry/pid)" 2>/dev/null
  kill -TERM "$SERVER" 2>/dev/null; wait "$SERVER"
}}
# The set-up's main job: the all-in-one server on its embedded defaults.
imc server >{w}/server.log 2>&1 &
SERVER=$!
trap stop EXIT
for _ in $(seq 300); do
  [ -f /var/lib/imc/kubeconfig.yaml ] && KUBECONFIG=/var/lib/imc/kubeconfig.yaml kubectl get --raw /readyz >/dev/null 2>&1 && break
  sleep 0.1
done
"#,
        bin = imc.parent().expect("imc's directory").display()
    );
    for (n, step) in steps.iter().enumerate() {
        let _ = writeln!(
            s,
            "{{ {cmd}\n}} >{w}/out/{n} 2>&1 </dev/null; echo $? >{w}/rc/{n}; [ \"$(cat {w}/rc/{n})\" = 0 ] || exit 1",
            cmd = step.command
        );
    }
    s
}

#[test]
fn the_readme_walkthrough_runs_as_written_on_a_fresh_machine() {
    let root = repo_root();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("read README.md");
    let steps = walkthrough(&readme);
    assert!(
        steps.len() >= 5,
        "the walk-through has too few steps: {steps:?}"
    );

    let work = tempfile::tempdir().expect("work dir");
    for dir in ["imc", "registry", "out", "rc"] {
        std::fs::create_dir(work.path().join(dir)).expect("create work subdir");
    }
    let script_path = work.path().join("walkthrough.sh");
    std::fs::write(
        &script_path,
        script(&steps, work.path(), Path::new(env!("CARGO_BIN_EXE_imc"))),
    )
    .expect("write the script");

    let status = Command::new("unshare")
        .args(["--mount", "--net", "--propagation", "private", "bash"])
        .arg(&script_path)
        .current_dir(&root)
        .status()
        .expect("run unshare (util-linux)");
    let server_log = std::fs::read_to_string(work.path().join("server.log")).unwrap_or_default();
    let server_tail: String = server_log
        .lines()
        .rev()
        .take(30)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");

    for (n, step) in steps.iter().enumerate() {
        let rc = std::fs::read_to_string(work.path().join(format!("rc/{n}")));
        let out = std::fs::read_to_string(work.path().join(format!("out/{n}"))).unwrap_or_default();
        let rc = rc.unwrap_or_else(|_| {
            panic!(
                "README step {n} `{}` never ran (the walk-through stopped earlier; unshare exited {status}); server log:\n{server_tail}",
                step.command
            )
        });
        assert_eq!(
            rc.trim(),
            "0",
            "README step {n} `{}` failed; its output:\n{out}\nserver log:\n{server_tail}",
            step.command
        );
        let actual: Vec<String> = out.lines().map(str::to_owned).collect();
        assert!(
            matches(&step.expected, &actual),
            "README step {n} `{}` printed\n{}\nbut the README shows\n{}",
            step.command,
            actual.join("\n"),
            step.expected.join("\n")
        );
    }
    assert!(status.success(), "the walk-through's shell exited {status}");
}

#[test]
fn output_comparison_rules() {
    let v = |s: &[&str]| s.iter().map(|l| (*l).to_owned()).collect::<Vec<_>>();
    let table = v(&["NAME   AGE   PHASE", "a      1s    Ready"]);
    assert!(matches(
        &table,
        &v(&["NAME   AGE   PHASE", "a   40m   Ready"])
    ));
    assert!(!matches(
        &table,
        &v(&["NAME   AGE   PHASE", "b   1s   Ready"])
    ));
    assert!(!matches(&table, &v(&["NAME   AGE", "a   1s"])));
    assert!(!matches(&table, &v(&["NAME   AGE   PHASE"])));
    assert!(matches(&v(&["hello"]), &v(&["hello"])));
    assert!(!matches(&v(&["hello"]), &v(&["hello", "Warning: x"])));
    assert!(matches(&[], &[]));
    assert!(!matches(&[], &v(&["unexpected"])));
}
