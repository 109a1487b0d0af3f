//! A stand-in for "the internet" that a test owns: a network namespace joined to the host by a
//! veth pair on a /30 of TEST-NET-2 (198.51.100.0/24), running busybox httpd with a CGI that
//! answers the client's address as it sees it. The namespace knows no route to pod ranges, so a
//! pod reaches it only through the host's masquerade, and the answer shows the address it came
//! from. Everything is removed on drop.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};

/// The outside network and its web server.
pub struct OutsideNetwork {
    netns: String,
    host_link: String,
    /// The host's address on the link (what masqueraded traffic comes from).
    pub host_ip: String,
    /// The outside server's address.
    pub server_ip: String,
    /// The server's port.
    pub port: u16,
    httpd: Option<Child>,
    _www: tempfile::TempDir,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl OutsideNetwork {
    /// Creates the namespace, the link and the server. The /30 and the names derive from this
    /// process's pid, so concurrent test processes do not collide.
    pub fn start() -> Result<Self> {
        let key = std::process::id() % 60;
        let base = 4 * (key + 1);
        let netns = format!("imc-outside-{}", std::process::id());
        let host_link = format!("imo{}h", std::process::id() % 100_000);
        let peer_link = format!("imo{}o", std::process::id() % 100_000);
        let host_ip = format!("198.51.100.{}", base + 1);
        let server_ip = format!("198.51.100.{}", base + 2);
        let www = tempfile::Builder::new().prefix("imc-outside-").tempdir()?;
        let mut me = OutsideNetwork {
            netns: netns.clone(),
            host_link: host_link.clone(),
            host_ip: host_ip.clone(),
            server_ip: server_ip.clone(),
            port: 8099,
            httpd: None,
            _www: www,
        };
        ip(&["netns", "add", &netns])?;
        ip(&[
            "link", "add", &host_link, "type", "veth", "peer", "name", &peer_link,
        ])?;
        ip(&["link", "set", &peer_link, "netns", &netns])?;
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_link])?;
        ip(&["link", "set", &host_link, "up"])?;
        let inside = |args: &[&str]| -> Result<()> {
            let mut all = vec!["netns", "exec", netns.as_str(), "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        inside(&["addr", "add", &format!("{server_ip}/30"), "dev", &peer_link])?;
        inside(&["link", "set", &peer_link, "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        let cgi: PathBuf = me._www.path().join("cgi-bin");
        std::fs::create_dir_all(&cgi)?;
        let script = cgi.join("whoami");
        std::fs::write(
            &script,
            "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n%s\\n' \"$REMOTE_ADDR\"\n",
        )?;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &netns, "/bin/busybox", "httpd", "-f", "-p"])
            .arg(format!("{server_ip}:{}", me.port))
            .arg("-h")
            .arg(me._www.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting busybox httpd in the outside namespace")?;
        me.httpd = Some(child);
        Ok(me)
    }

    /// The URL of the CGI answering the caller's address.
    pub fn whoami_url(&self) -> String {
        format!("http://{}:{}/cgi-bin/whoami", self.server_ip, self.port)
    }
}

impl Drop for OutsideNetwork {
    fn drop(&mut self) {
        if let Some(mut c) = self.httpd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = ip(&["link", "del", &self.host_link]);
        let _ = ip(&["netns", "del", &self.netns]);
    }
}
