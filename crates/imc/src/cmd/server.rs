//! `imc server`: the all-in-one single-machine server.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use imc_apiserver::{Server, ServerConfig};
use imc_controllers::manager::{self, Settings};
use imc_controllers::metrics::Metrics;
use imc_controllers::node::Node;

use super::DataDirArg;
use super::registry_args::RegistryArgs;

#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    #[command(flatten)]
    pub data: DataDirArg,
    /// Address of the HTTPS API (loopback by default; port 0 picks a free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:6443")]
    pub listen: SocketAddr,
    /// How many changes are kept for watchers to resume from; older versions get 410 Gone.
    #[arg(long, value_name = "N", default_value_t = 10_000, hide = true)]
    pub watch_window: u64,
    /// Testing only: serve the API alone, without controllers or the node (the API server's
    /// own tests set status by hand and must not race a controller).
    #[arg(long, hide = true)]
    pub api_only: bool,
    /// Built-in parts not to run, comma-separated (k3s's convention): `admission` (the pod
    /// admission that picks image caches; an `imc webhook` registered through a
    /// MutatingWebhookConfiguration can stand in for it), `controllers` and `node` (only both
    /// together for now: the API alone).
    #[arg(long, value_name = "PARTS", value_delimiter = ',', value_parser = parse_disabled)]
    pub disable: Vec<Disabled>,
    /// Registries used by the cache controller and the node (per-cache annotations add to them).
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Pod Security Standards level enforced in namespaces without a
    /// `pod-security.kubernetes.io/enforce` label: privileged, baseline or restricted.
    #[arg(long, value_name = "LEVEL", default_value = "baseline", value_parser = parse_pod_security_level)]
    pub pod_security_default: imc_apiserver::PodSecurityLevel,
    /// Name of this machine's Node [default: the hostname].
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// Testing only: seconds added to the controllers' clock (retention), to test expiry
    /// without waiting days.
    #[arg(long, value_name = "SECONDS", default_value_t = 0, hide = true)]
    pub clock_offset_seconds: i64,
    /// Testing only: bytes per GiB of `imageCacheSize`, so small images can exceed a cache size.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 30, hide = true)]
    pub gib_bytes: u64,
    /// Most processes (and threads) each container may run at once (its cgroup's pids.max);
    /// 0 for no limit. A fork bomb in one pod then cannot exhaust the host's pids.
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub container_pids_limit: i64,
    /// Size at which a container's log file is rotated (a quantity such as 10Mi or 64Ki), as
    /// the kubelet's --container-log-max-size.
    #[arg(long, value_name = "QUANTITY", default_value = "10Mi", value_parser = parse_quantity)]
    pub container_log_max_size: u64,
    /// Log files kept per container, the current one included (at least 2), as the kubelet's
    /// --container-log-max-files.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub container_log_max_files: u32,
    /// Most read requests (GET) served at once; more are answered 429 with Retry-After, as
    /// kube-apiserver's flag. Watches and log streams are counted apart. 0 for no limit.
    #[arg(long, value_name = "N", default_value_t = 400)]
    pub max_requests_inflight: usize,
    /// Most writing requests (POST, PUT, PATCH, DELETE) served at once, as kube-apiserver's
    /// flag; 0 for no limit.
    #[arg(long, value_name = "N", default_value_t = 200)]
    pub max_mutating_requests_inflight: usize,
    /// Most watches and log streams open at once; 0 for no limit.
    #[arg(long, value_name = "N", default_value_t = 2000)]
    pub max_watches: usize,
    /// Most connections open at once (lowered to fit the open files limit). At the limit the
    /// oldest connection without an authenticated request is closed to make room.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Longest a request other than a watch or a log stream may take (a request's ?timeout=
    /// may only shorten it), as kube-apiserver's flag: 60s, 2m, 1h30m.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Testing only: time a client has to finish its TLS handshake.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration, hide = true)]
    pub tls_handshake_timeout: Duration,
    /// Testing only: a connection without requests or traffic this long is closed.
    #[arg(long, value_name = "DURATION", default_value = "90s", value_parser = parse_duration, hide = true)]
    pub idle_connection_timeout: Duration,
    /// Pod addresses: each pod gets one from this IPv4 range on the node's bridge, reaches the
    /// other pods and the host, and goes out through the host (masquerade).
    #[arg(long, value_name = "CIDR", default_value = "10.88.0.0/16", value_parser = parse_cidr)]
    pub pod_cidr: String,
    /// The Linux bridge the pods' interfaces join (created by the CNI bridge plugin).
    #[arg(long, value_name = "NAME", default_value = "imc0", value_parser = parse_bridge)]
    pub pod_bridge: String,
    /// A CNI network configuration list to use instead of imc's own (which is written to
    /// DIR/cni/10-imc.conflist from --pod-cidr and --pod-bridge at every start).
    #[arg(long, value_name = "FILE")]
    pub cni_config: Option<std::path::PathBuf>,
    /// Where the CNI plugin programs are (':'-separated).
    #[arg(long, value_name = "DIRS", default_value = "/usr/lib/cni:/opt/cni/bin")]
    pub cni_bin_dir: String,
    /// The cluster's DNS domain: the cluster DNS (on the pod network's gateway, port 53)
    /// answers `<service>.<namespace>.svc.<domain>`, and pods search it.
    #[arg(long, value_name = "DOMAIN", default_value = "cluster.local", value_parser = parse_domain)]
    pub cluster_domain: String,
}

/// A DNS domain for `--cluster-domain`: dot-separated labels of lower-case letters, digits and
/// '-'.
fn parse_domain(s: &str) -> Result<String, String> {
    let d = s.trim_end_matches('.');
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    if d.is_empty() || d.len() > 200 || !d.split('.').all(label_ok) {
        return Err(format!(
            "{s:?} is not a DNS domain such as cluster.local (lower-case labels separated by dots)"
        ));
    }
    Ok(d.to_owned())
}

/// A Go-style duration (`60s`, `2m`, `1h30m`) for a flag.
pub(super) fn parse_duration(s: &str) -> Result<Duration, String> {
    imc_apiserver::inflight::parse_go_duration(s)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{s:?} is not a duration (e.g. 60s, 2m, 1h30m)"))
}

/// An IPv4 range `a.b.c.d/n` for `--pod-cidr`.
fn parse_cidr(s: &str) -> Result<String, String> {
    let bad = || format!("{s:?} is not an IPv4 range such as 10.88.0.0/16");
    let (ip, bits) = s.split_once('/').ok_or_else(bad)?;
    ip.parse::<std::net::Ipv4Addr>().map_err(|_| bad())?;
    match bits.parse::<u8>() {
        Ok(b) if (8..=30).contains(&b) => Ok(s.to_owned()),
        _ => Err(format!("{s:?}: the prefix length must be between 8 and 30")),
    }
}

/// A Linux interface name for `--pod-bridge`.
fn parse_bridge(s: &str) -> Result<String, String> {
    if s.is_empty()
        || s.len() > 15
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "{s:?} is not an interface name (1 to 15 letters, digits, '-' or '_')"
        ));
    }
    Ok(s.to_owned())
}

/// The CNI network pods join: `--cni-config` as given, else imc's own list written to
/// `DIR/cni/10-imc.conflist` (a bridge with addresses from `--pod-cidr`, leases kept in
/// `DIR/cni/ipam`, masquerade, host ports).
fn pod_network(args: &ServerArgs) -> anyhow::Result<imc_runtime::CniNetwork> {
    let bins: Vec<std::path::PathBuf> = std::env::split_paths(&args.cni_bin_dir).collect();
    let path = match &args.cni_config {
        Some(p) => p.clone(),
        None => {
            let dir = args.data.data_dir.join("cni");
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let list =
                imc_runtime::default_conflist(&args.pod_bridge, &args.pod_cidr, &dir.join("ipam"));
            let path = dir.join("10-imc.conflist");
            let tmp = dir.join(".10-imc.conflist.tmp");
            std::fs::write(&tmp, serde_json::to_vec_pretty(&list)?)
                .with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
            path
        }
    };
    imc_runtime::CniNetwork::load(&path, bins)
        .with_context(|| format!("loading the pod network configuration {}", path.display()))
}

/// Installs or removes (`change`) the outbound NAT of imc's own network (`--pod-cidr` on
/// `--pod-bridge`): installed at start, removed at a graceful stop. Runs `iptables`, so on the
/// blocking pool.
async fn masquerade(
    args: &ServerArgs,
    change: fn(&imc_runtime::PodMasquerade) -> Result<(), imc_runtime::RuntimeError>,
) -> anyhow::Result<()> {
    let rules = imc_runtime::PodMasquerade::new(&args.pod_bridge, &args.pod_cidr)?;
    tokio::task::spawn_blocking(move || change(&rules)).await??;
    Ok(())
}

/// A Pod Security Standards level, as `--pod-security-default` takes it.
fn parse_pod_security_level(s: &str) -> Result<imc_apiserver::PodSecurityLevel, String> {
    s.parse()
        .map_err(|e: imc_apiserver::pod_security::LabelError| e.to_string())
}

/// A byte quantity (`10Mi`, `64Ki`, `1000000`) for a flag.
fn parse_quantity(s: &str) -> Result<u64, String> {
    imc_controllers::quantity::parse_bytes(s)
        .ok_or_else(|| format!("{s:?} is not a quantity of bytes (e.g. 10Mi, 64Ki)"))
}

/// The kernel's hostname, the default Node name.
pub(super) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The whole graceful stop, from the signal to the exit; past it the process exits anyway
/// (status 1) and the next start's recovery removes what is left.
const SHUTDOWN_BOUND: Duration = Duration::from_secs(20);

/// Kept of [`SHUTDOWN_BOUND`] after the node's part, for the last cleanup and the exit.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(2);

/// A built-in part `--disable` turns off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disabled {
    /// The in-process pod admission (image cache choice).
    Admission,
    /// The controllers.
    Controllers,
    /// The node.
    Node,
}

fn parse_disabled(s: &str) -> Result<Disabled, String> {
    match s.trim() {
        "admission" => Ok(Disabled::Admission),
        "controllers" => Ok(Disabled::Controllers),
        "node" => Ok(Disabled::Node),
        other => Err(format!(
            "{other:?} cannot be disabled: the parts are admission, controllers and node"
        )),
    }
}

impl ServerArgs {
    fn disabled(&self, part: Disabled) -> bool {
        self.disable.contains(&part)
    }

    /// Serves the API alone (`--api-only`, or `--disable controllers,node`); refuses disabling
    /// only one of controllers and node, which run together.
    fn api_alone(&self) -> anyhow::Result<bool> {
        match (
            self.disabled(Disabled::Controllers),
            self.disabled(Disabled::Node),
        ) {
            (true, true) => Ok(true),
            (false, false) => Ok(self.api_only),
            _ => anyhow::bail!(
                "--disable: controllers and node can only be disabled together (the node runs with the controllers)"
            ),
        }
    }
}

/// What a graceful stop of the process stops.
struct Stoppable {
    node: Arc<Node>,
    ctx: Arc<manager::Context>,
    services: Arc<imc_runtime::service_proxy::ServiceProxy>,
}

/// Starts the controllers as clients of `server` (over its kubeconfig, like any cluster
/// client) and installs `/metrics` and the admission hooks they own. Returns what the shutdown
/// stops.
async fn start_controllers(
    server: &Server,
    args: &ServerArgs,
    log_limits: imc_runtime::LogLimits,
) -> anyhow::Result<Stoppable> {
    let config = super::kubeconfig_file(server.kubeconfig()).await?;
    let config = super::with_user_agent(
        config,
        concat!("imc-controllers/", env!("CARGO_PKG_VERSION"), " kube-rs"),
    );
    let client = kube::Client::try_from(config).context("creating the controllers' client")?;
    // The CA the API server wrote (DIR/pki), published as kube-root-ca.crt for in-pod clients.
    let ca_path = args.data.data_dir.join("pki").join("ca.crt");
    let root_ca = tokio::fs::read_to_string(&ca_path)
        .await
        .with_context(|| format!("reading {}", ca_path.display()))?;
    let settings = Settings {
        data_dir: args.data.data_dir.clone(),
        node_name: args.node_name.clone().unwrap_or_else(hostname),
        registry: args.registry.options()?,
        platform: args.registry.platform()?,
        jobs: args.registry.jobs,
        clock_offset: jiff::SignedDuration::from_secs(args.clock_offset_seconds),
        gib_bytes: args.gib_bytes.max(1),
        container_pids_limit: (args.container_pids_limit > 0).then_some(args.container_pids_limit),
        root_ca: Some(root_ca),
    };
    let metrics = Arc::new(Metrics::new());
    let ctx = manager::Context::new(client, settings, metrics.clone())
        .context("opening the layer store")?;
    let api = server.api();
    api.set_metrics(Arc::new(move || metrics.encode()));
    let api_service = api_service(args, server.local_addr())?;
    let view = imc_controllers::service_view::ServiceView::watch(ctx.client.clone());
    let cluster_dns = start_cluster_dns(args, &view).await;
    let node = start_node(&api, &ctx, args, log_limits, api_service, cluster_dns).await?;
    let services = start_service_proxy(view, args).await?;
    tokio::spawn(manager::run(ctx.clone()));
    Ok(Stoppable {
        node,
        ctx,
        services,
    })
}

/// Registers pod admission (cache choice; the scheduler binds pods) and starts the node, whose
/// container logs the API server then serves.
async fn start_node(
    api: &imc_apiserver::ApiServer,
    ctx: &Arc<manager::Context>,
    args: &ServerArgs,
    log_limits: imc_runtime::LogLimits,
    api_service: Option<imc_controllers::node::ApiService>,
    cluster_dns: Option<imc_controllers::node::ClusterDnsConfig>,
) -> anyhow::Result<Arc<Node>> {
    use imc_controllers::admission_hook::{CacheView, PodAdmission};
    let view = CacheView::watch(ctx.client.clone());
    let store = ctx.layers.clone();
    // The layers (compressed digests, as cache statuses list them) of images pulled before.
    let known_layers = Arc::new(move |r: &imc_api::Reference| {
        store
            .image(r)
            .ok()
            .flatten()
            .map(|i| {
                i.layers
                    .iter()
                    .map(|l| (l.digest.clone(), l.size))
                    .collect()
            })
            .unwrap_or_default()
    });
    if args.disabled(Disabled::Admission) {
        tracing::info!("pod admission disabled (--disable admission)");
    } else {
        let admission =
            PodAdmission::new(view.clone(), known_layers).with_client(ctx.client.clone());
        api.admission().add_mutating("", "Pod", admission.into_fn());
    }
    let network = pod_network(args)?;
    if args.cni_config.is_none() {
        masquerade(args, imc_runtime::PodMasquerade::install)
            .await
            .context("setting up the pod network")?;
    }
    let options = imc_controllers::node::NodeOptions {
        log_limits,
        network: Some(network),
        api_service,
        cluster_dns,
    };
    let node = Node::start(ctx.clone(), view, options)
        .await
        .context("starting the node")?;
    api.set_pod_logs(Arc::new(NodeLogs(node.clone())));
    api.set_pod_streams(Arc::new(super::node_streams::NodeStreams(node.clone())));
    Ok(node)
}

/// Installs the Service data path (imc's iptables chains for ClusterIPs and NodePorts) and
/// starts keeping it in line with the Services and EndpointSlices, as kube-proxy does.
async fn start_service_proxy(
    view: imc_controllers::service_view::ServiceView,
    args: &ServerArgs,
) -> anyhow::Result<Arc<imc_runtime::service_proxy::ServiceProxy>> {
    let proxy = Arc::new(imc_runtime::service_proxy::ServiceProxy::new(
        &args.pod_bridge,
    )?);
    let p = proxy.clone();
    tokio::task::spawn_blocking(move || p.install())
        .await?
        .context("installing the Service data path")?;
    tokio::spawn(imc_controllers::proxy::run(view, proxy.clone()));
    Ok(proxy)
}

/// Starts the cluster DNS on the pod network's gateway, port 53 (UDP and TCP), forwarding
/// names outside `--cluster-domain` to the host's resolvers. Returns what pods put in their
/// resolv.conf; `None` (logged) when it cannot listen: pods then keep the host's resolvers,
/// with a `MissingClusterDNS` warning event, as the kubelet does without `--cluster-dns`.
async fn start_cluster_dns(
    args: &ServerArgs,
    view: &imc_controllers::service_view::ServiceView,
) -> Option<imc_controllers::node::ClusterDnsConfig> {
    let gateway = super::api_forwarder::gateway(&args.pod_cidr)?;
    let host = tokio::fs::read_to_string("/etc/resolv.conf")
        .await
        .unwrap_or_default();
    let upstreams = imc_controllers::dns::upstreams(&host, gateway.into());
    let dns = imc_controllers::dns::ClusterDns::new(view.clone(), &args.cluster_domain, upstreams);
    let addr = std::net::SocketAddr::from((gateway, 53));
    match dns.serve(addr) {
        Ok(()) => {
            tracing::info!(%addr, domain = %args.cluster_domain, "cluster dns listening");
            Some(imc_controllers::node::ClusterDnsConfig {
                nameserver: gateway.into(),
                domain: args.cluster_domain.clone(),
            })
        }
        Err(e) => {
            tracing::warn!(%addr, error = %e, "cannot serve the cluster dns: pods use the host's resolvers");
            None
        }
    }
}

/// Where pods reach the API server (their `KUBERNETES_SERVICE_HOST` …): pods on the pod
/// network through its gateway, where a forwarder to the API's address listens unless the
/// API listens on every address already; `hostNetwork` pods at the API's own address
/// (loopback when it listens on every address).
fn api_service(
    args: &ServerArgs,
    api: std::net::SocketAddr,
) -> anyhow::Result<Option<imc_controllers::node::ApiService>> {
    let Some(gateway) = super::api_forwarder::gateway(&args.pod_cidr) else {
        return Ok(None);
    };
    if !api.ip().is_unspecified() {
        let from = std::net::SocketAddr::from((gateway, api.port()));
        super::api_forwarder::start(from, api)
            .with_context(|| format!("listening on {from} for pods to reach the API"))?;
    }
    let host_network_host = if api.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        api.ip().to_string()
    };
    Ok(Some(imc_controllers::node::ApiService {
        pod_host: gateway.to_string(),
        host_network_host,
        port: api.port(),
    }))
}

/// `kubectl logs` served from the node's container log files.
struct NodeLogs(Arc<Node>);

impl imc_apiserver::PodLogs for NodeLogs {
    fn logs(
        &self,
        pod: serde_json::Value,
        options: imc_apiserver::LogOptions,
    ) -> imc_apiserver::logs::LogFuture {
        let node = self.0.clone();
        Box::pin(async move {
            let text = |p: &str| pod.pointer(p).and_then(|v| v.as_str()).unwrap_or("");
            let (uid, name) = (
                text("/metadata/uid").to_owned(),
                text("/metadata/name").to_owned(),
            );
            // The API server has checked it against the pod's containers.
            let container = options
                .container
                .clone()
                .unwrap_or_else(|| text("/spec/containers/0/name").to_owned());
            let since = options.since_time.or_else(|| {
                options.since_seconds.map(|s| {
                    jiff::Timestamp::now()
                        .checked_sub(jiff::SignedDuration::from_secs(s))
                        .unwrap_or(jiff::Timestamp::MIN)
                })
            });
            let request = imc_controllers::node::LogRequest {
                container,
                follow: options.follow,
                tail_lines: options.tail_lines,
                previous: options.previous,
                timestamps: options.timestamps,
                since,
                limit_bytes: options.limit_bytes,
            };
            let stream = node
                .logs(&uid, &name, request)
                .await
                .map_err(|e| imc_apiserver::ApiError::BadRequest(e.to_string()))?;
            Ok(axum::body::Body::from_stream(stream))
        })
    }
}

pub async fn run(args: ServerArgs) -> anyhow::Result<ExitCode> {
    // Refused before anything starts.
    let log_limits =
        imc_runtime::LogLimits::new(args.container_log_max_size, args.container_log_max_files)?;
    let api_alone = args.api_alone()?;
    let mut config = ServerConfig::new(&args.data.data_dir, args.listen);
    config.watch_window = args.watch_window;
    config.pod_security_default = args.pod_security_default;
    config.inflight = imc_apiserver::inflight::InflightConfig {
        max_requests_inflight: args.max_requests_inflight,
        max_mutating_requests_inflight: args.max_mutating_requests_inflight,
        max_long_running: args.max_watches,
        request_timeout: args.request_timeout,
    };
    config.connections = imc_apiserver::connections::ConnectionConfig {
        max_connections: args.max_connections,
        handshake_timeout: args.tls_handshake_timeout,
        idle_timeout: args.idle_connection_timeout,
        ..Default::default()
    };
    // In-pod clients reach the API through the pod network's gateway (see api_forwarder).
    if !args.api_only
        && let Some(gateway) = super::api_forwarder::gateway(&args.pod_cidr)
    {
        config.extra_sans.push(gateway.to_string());
    }
    let server = Server::bind(config).await.with_context(|| {
        format!(
            "starting the API server in {}",
            args.data.data_dir.display()
        )
    })?;
    tracing::info!(addr = %server.local_addr(), "api server listening");
    let stoppable = if api_alone {
        None
    } else {
        Some(start_controllers(&server, &args, log_limits).await?)
    };
    // Printed on stdout so scripts (and tests) can pick the kubeconfig up.
    println!("listening on https://{}", server.local_addr());
    println!(
        "read-only kubeconfig: {}",
        server
            .kubeconfig()
            .with_file_name("kubeconfig-view.yaml")
            .display()
    );
    println!("kubeconfig: {}", server.kubeconfig().display());
    println!("  export KUBECONFIG={}", server.kubeconfig().display());
    let signalled = std::sync::OnceLock::new();
    server
        .serve(async {
            shutdown_signal().await;
            // Closing every connection cuts the in-process controllers' watches: expected now
            // (neither they nor the log warn about it).
            imc_controllers::stopping::begin();
            let _ = signalled.set(Instant::now());
            exit_after(SHUTDOWN_BOUND);
        })
        .await?;
    // The API's own shutdown took part of the bound; the node gets the rest.
    let spent = signalled.get().map_or(Duration::ZERO, Instant::elapsed);
    let node_bound = SHUTDOWN_BOUND.saturating_sub(spent + SHUTDOWN_MARGIN);
    // The API accepts nothing more: builds are called off and the containers go now; caches and
    // pods stay as they are for the next start.
    if let Some(Stoppable {
        node,
        ctx,
        services,
    }) = stoppable
    {
        ctx.stop_builds();
        let report = node.shutdown(node_bound).await;
        let temp = ctx.remove_temp_work();
        if temp > 0 {
            tracing::info!(
                entries = temp,
                "removed the temporary work of called-off builds"
            );
        }
        match tokio::task::spawn_blocking(move || services.remove()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "removing the Service data path"),
            Err(e) => tracing::warn!(error = %e, "removing the Service data path"),
        }
        if args.cni_config.is_none()
            && let Err(e) = masquerade(&args, imc_runtime::PodMasquerade::remove).await
        {
            tracing::warn!(error = %e, "removing the pod network's masquerade");
        }
        if report.left.is_empty() {
            tracing::info!(pods = ?report.stopped, "stopped and removed the containers of every pod");
        } else {
            tracing::warn!(
                pods = ?report.stopped,
                left = ?report.left,
                "shutdown bound reached: the next start removes what is left"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Ends the process after `bound` whatever still runs (a stuck unmount, a blocking build), so a
/// graceful stop never hangs.
fn exit_after(bound: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(bound);
        tracing::error!(
            bound = ?bound,
            "graceful stop took too long: exiting; the next start cleans up what is left"
        );
        std::process::exit(1);
    });
}

pub(super) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
