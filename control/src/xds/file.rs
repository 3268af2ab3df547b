//! File subscriptions (`path_config_source`, or the deprecated `ConfigSource.path`): listeners,
//! clusters and endpoint assignments from files in Envoy's `DiscoveryResponse` format, read
//! again when Envoy would read them.
//!
//! One thread (`xds-files`) owns every file subscription and one inotify descriptor. As in
//! Envoy, a file is read when its subscription starts and then each time something is
//! *moved* into place: onto the path itself (the file's directory is watched for `MOVED_TO`
//! with the file's name), or, with `watched_directory`, anywhere into that directory (the
//! atomic swap of a Kubernetes ConfigMap's `..data` link). Writing the file in place is not
//! a change (a reader could see it half written); write a temporary file and rename it.
//!
//! Each read is one update, judged like an ADS response of the type (the same
//! [`super::sotw::Subscription`] and validators, so the same rules and field paths), except
//! that there is nobody to ACK or NACK:
//! - a file that cannot be read or parsed changes nothing: [`Event::Failed`], Envoy's
//!   `update_failure`;
//! - a file the walker refuses (an unknown or unsupported field, a badly typed value, named
//!   by its path from the file's root, `resources[1].address...`) changes nothing:
//!   [`Event::Failed`] as rejected, Envoy's `update_rejected` (Envoy refuses such a file
//!   whole too);
//! - otherwise the resources are judged one by one as over ADS: the valid ones apply, each
//!   refused one keeps its previous version and is reported (`update_rejected`), and a held
//!   listener or cluster missing from the file is removed (State of the World);
//! - an endpoint file holds exactly one assignment, for the service the cluster watches
//!   (Envoy's rule); anything else is refused whole.
//!
//! The thread waits for commands at most [`POLL`] at a time and then reads what inotify has,
//! so a move is seen within about that long.

use super::client::{ClusterSources, Event, EventSink, Failure, ListenerAddresses};
use super::{
    resource, sotw, Change, Parallel, CLUSTER_TYPE, ENDPOINTS_TYPE, LISTENER_TYPE, SECRET_TYPE,
};
use crate::config::{parse_text, Format};
use crate::rib::{Bind, FileSource};
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use rustix::fs::inotify;
use std::collections::{BTreeMap, BTreeSet};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// How long the thread waits for a command before it looks at inotify's events.
pub const POLL: Duration = Duration::from_millis(100);

/// The file subscriptions of `dynamic_resources`.
#[derive(Debug, Clone, Default)]
pub struct FilesConfig {
    /// `lds_config.path_config_source`.
    pub listeners: Option<FileSource>,
    /// `cds_config.path_config_source`.
    pub clusters: Option<FileSource>,
    /// Addresses no listener from the file may take (static listeners, the admin).
    pub reserved_addresses: Vec<(String, Bind)>,
    /// What a cluster's `eds_config` may name.
    pub eds_sources: ClusterSources,
}

/// What the control thread asks of the file thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileCommand {
    /// The endpoint files to watch, each with the assignment names the clusters using it
    /// watch; a file no longer listed is dropped (its assignments reported removed).
    WatchEndpoints(BTreeMap<FileSource, Vec<String>>),
    /// The secret files to watch (SDS `path_config_source`), each with the secret names
    /// listeners and clusters take from it; a file no longer listed is dropped (its secret
    /// is kept by the control thread while anything uses it).
    WatchSecrets(BTreeMap<FileSource, Vec<String>>),
    /// End the thread.
    Stop,
}

/// What a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Listeners,
    Clusters,
    Endpoints,
    Secrets,
}

impl Kind {
    fn type_url(self) -> &'static str {
        match self {
            Kind::Listeners => LISTENER_TYPE,
            Kind::Clusters => CLUSTER_TYPE,
            Kind::Endpoints => ENDPOINTS_TYPE,
            Kind::Secrets => SECRET_TYPE,
        }
    }
}

/// One watched file.
struct FileSub {
    source: FileSource,
    kind: Kind,
    /// For endpoints: the assignment names watched (a named subscription).
    sub: sotw::Subscription,
}

/// Starts the file thread. The initial reads of the listener and cluster files happen on
/// it at once (clusters first); their events are the first it sends.
pub fn spawn(
    config: FilesConfig,
    events: EventSink,
) -> std::io::Result<(mpsc::Sender<FileCommand>, std::thread::JoinHandle<()>)> {
    let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)?;
    let mut files = Files {
        fd,
        watches: BTreeMap::new(),
        subs: Vec::new(),
        listeners: ListenerAddresses::new(config.reserved_addresses),
        clusters: config.eds_sources,
        events,
    };
    for (source, kind) in [
        (config.clusters, Kind::Clusters),
        (config.listeners, Kind::Listeners),
    ] {
        if let Some(source) = source {
            files.watch(&source)?;
            files.subs.push(FileSub {
                source,
                kind,
                sub: sotw::Subscription::wildcard(kind.type_url()),
            });
        }
    }
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("xds-files".into())
        .spawn(move || files.run(rx))?;
    Ok((tx, handle))
}

struct Files {
    fd: OwnedFd,
    /// Directories watched, with their watch descriptors (kept once added).
    watches: BTreeMap<PathBuf, i32>,
    subs: Vec<FileSub>,
    listeners: ListenerAddresses,
    clusters: ClusterSources,
    events: EventSink,
}

/// The directory to watch for `source`, and the name a move must have (none: any).
fn watch_target(source: &FileSource) -> (PathBuf, Option<&std::ffi::OsStr>) {
    match &source.watched_directory {
        Some(dir) => (dir.clone(), None),
        None => {
            let dir = match source.path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            (dir, source.path.file_name())
        }
    }
}

impl Files {
    fn run(mut self, commands: mpsc::Receiver<FileCommand>) {
        let all: Vec<usize> = (0..self.subs.len()).collect();
        if self.refresh(&all).is_err() {
            return;
        }
        loop {
            match commands.recv_timeout(POLL) {
                Ok(FileCommand::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
                Ok(FileCommand::WatchEndpoints(files)) => {
                    if self.watch_named(Kind::Endpoints, files).is_err() {
                        return;
                    }
                }
                Ok(FileCommand::WatchSecrets(files)) => {
                    if self.watch_named(Kind::Secrets, files).is_err() {
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            let moved = self.moved();
            if self.refresh(&moved).is_err() {
                return;
            }
        }
    }

    /// Adds the inotify watch `source` needs.
    fn watch(&mut self, source: &FileSource) -> std::io::Result<()> {
        let (dir, _) = watch_target(source);
        if !self.watches.contains_key(&dir) {
            let wd = inotify::add_watch(&self.fd, &dir, inotify::WatchFlags::MOVED_TO)
                .map_err(|e| std::io::Error::other(format!("watch {}: {e}", dir.display())))?;
            self.watches.insert(dir, wd);
        }
        Ok(())
    }

    /// The subscriptions whose file something was moved onto since the last call.
    fn moved(&mut self) -> Vec<usize> {
        let mut buf = [MaybeUninit::<u8>::uninit(); 8192];
        let mut reader = inotify::Reader::new(&self.fd, &mut buf);
        let mut hits: BTreeSet<usize> = BTreeSet::new();
        loop {
            let event = match reader.next() {
                Ok(e) => e,
                Err(rustix::io::Errno::INTR) => continue,
                // AGAIN: nothing more for now; anything else: try again next time.
                Err(_) => break,
            };
            if event.events().contains(inotify::ReadFlags::QUEUE_OVERFLOW) {
                hits.extend(0..self.subs.len());
                continue;
            }
            let name = event
                .file_name()
                .map(|n| std::ffi::OsStr::from_bytes(n.to_bytes()));
            for (i, s) in self.subs.iter().enumerate() {
                let (dir, want) = watch_target(&s.source);
                if self.watches.get(&dir) != Some(&event.wd()) {
                    continue;
                }
                if want.is_none() || want == name {
                    hits.insert(i);
                }
            }
        }
        hits.into_iter().collect()
    }

    /// Follows the endpoint (or secret) files the control thread names: new ones are
    /// watched and read, ones whose names changed are read again, dropped ones report their
    /// assignments removed (secrets are not: see [`FileCommand::WatchSecrets`]).
    fn watch_named(
        &mut self,
        kind: Kind,
        files: BTreeMap<FileSource, Vec<String>>,
    ) -> Result<(), super::client::Gone> {
        let mut reread = Vec::new();
        let mut removed = Change::new(ENDPOINTS_TYPE, "");
        let mut kept = Vec::with_capacity(self.subs.len());
        for mut s in std::mem::take(&mut self.subs) {
            if s.kind != kind {
                kept.push(s);
                continue;
            }
            match files.get(&s.source) {
                None => removed.removals.extend(s.sub.held().keys().cloned()),
                Some(names) => {
                    if let Some((_, dropped)) = s.sub.set_names(names.iter().cloned()) {
                        removed.removals.extend(dropped);
                        reread.push(kept.len());
                    }
                    kept.push(s);
                }
            }
        }
        self.subs = kept;
        for (source, names) in files {
            if self
                .subs
                .iter()
                .any(|s| s.source == source && s.kind == kind)
            {
                continue;
            }
            if let Err(e) = self.watch(&source) {
                self.events.send(Event::Failed(Failure {
                    type_url: kind.type_url().into(),
                    names: names.clone(),
                    reason: format!("{}: {e}", source.path.display()),
                    rejected: false,
                }))?;
            }
            reread.push(self.subs.len());
            self.subs.push(FileSub {
                source,
                kind,
                sub: sotw::Subscription::named(kind.type_url(), names),
            });
        }
        if kind == Kind::Secrets {
            removed.removals.clear();
        }
        if !removed.removals.is_empty() {
            self.events.send(Event::Endpoints(removed))?;
        }
        self.refresh(&reread)
    }

    /// Reads the files of `subs` (indices) and reports what each changed.
    fn refresh(&mut self, subs: &[usize]) -> Result<(), super::client::Gone> {
        for &i in subs {
            let event = self.read(i);
            self.events.send(event)?;
        }
        Ok(())
    }

    /// One update from the file of subscription `i`.
    fn read(&mut self, i: usize) -> Event {
        let s = &mut self.subs[i];
        let path = s.source.path.clone();
        let fail = |reason: String, rejected: bool| {
            Event::Failed(Failure {
                type_url: s.kind.type_url().into(),
                names: s.sub.names(),
                reason: format!("{}: {reason}", path.display()),
                rejected,
            })
        };
        let response = match load(&path) {
            Ok(r) => r,
            Err((reason, rejected)) => return fail(reason, rejected),
        };
        if !response.type_url.is_empty() && response.type_url != s.kind.type_url() {
            return fail(
                format!(
                    "type_url: {:?}, but this file is a {} subscription",
                    response.type_url,
                    s.kind.type_url()
                ),
                true,
            );
        }
        let one = match s.kind {
            Kind::Endpoints => one_assignment(&response, &s.sub.names()),
            Kind::Secrets => one_secret(&response, &s.sub.names()),
            _ => Ok(()),
        };
        if let Err(reason) = one {
            return fail(reason, true);
        }
        match s.kind {
            Kind::Listeners => {
                Event::Listeners(s.sub.on_response(&response, &mut self.listeners).0)
            }
            Kind::Clusters => Event::Clusters(s.sub.on_response(&response, &mut self.clusters).0),
            Kind::Endpoints => Event::Endpoints(
                s.sub
                    .on_response(&response, &mut Parallel(resource::endpoints))
                    .0,
            ),
            Kind::Secrets => Event::Secrets(
                Some(s.source.clone()),
                s.sub
                    .on_response(&response, &mut Parallel(resource::secret))
                    .0,
            ),
        }
    }
}

/// Reads and parses `path` as a `DiscoveryResponse`: JSON for a `.json` name, else YAML (of
/// which JSON is a part). The error says whether the file was refused (`true`: it parsed,
/// but the walker refused a field) or could not be read or parsed.
fn load(path: &Path) -> Result<DiscoveryResponse, (String, bool)> {
    let text = std::fs::read_to_string(path).map_err(|e| (format!("cannot read: {e}"), false))?;
    let format = match path.extension().and_then(|e| e.to_str()) {
        Some("json") => Format::Json,
        _ => Format::Yaml,
    };
    let value = parse_text(&text, format).map_err(|e| (e.message().to_string(), false))?;
    resource::file_response(&value).map_err(|e| (e.to_string(), true))
}

/// Envoy's rule for an endpoint file: exactly one assignment, for a name watched.
fn one_assignment(response: &DiscoveryResponse, names: &[String]) -> Result<(), String> {
    let [any] = response.resources.as_slice() else {
        return Err(format!(
            "resources: an endpoint file holds exactly one ClusterLoadAssignment, not {}",
            response.resources.len()
        ));
    };
    let Ok((name, _)) = resource::endpoints(any) else {
        // Refused by the subscription, with its reason.
        return Ok(());
    };
    if names.contains(&name) {
        Ok(())
    } else {
        Err(format!(
            "resources[0].cluster_name: '{name}', but the file is watched for {names:?}"
        ))
    }
}

/// Envoy's rule for a secret file: exactly one secret, named as a listener or cluster
/// names it (Envoy: Unexpected SDS secrets length / Unexpected SDS secret).
fn one_secret(response: &DiscoveryResponse, names: &[String]) -> Result<(), String> {
    let [any] = response.resources.as_slice() else {
        return Err(format!(
            "resources: a secret file holds exactly one Secret, not {}",
            response.resources.len()
        ));
    };
    let Ok((name, _)) = resource::secret(any) else {
        return Ok(());
    };
    if names.contains(&name) {
        Ok(())
    } else {
        Err(format!(
            "resources[0].name: '{name}', but the file is watched for {names:?}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A fresh directory of this test process.
    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "switchyard-files-{tag}-{}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn cluster(name: &str) -> String {
        format!(
            r#"{{"@type": "{CLUSTER_TYPE}", "name": "{name}", "connect_timeout": "1s",
                "load_assignment": {{"cluster_name": "{name}", "endpoints": [{{"lb_endpoints":
                [{{"endpoint": {{"address": {{"socket_address": {{"address": "127.0.0.1",
                "port_value": 9000}}}}}}}}]}}]}}}}"#
        )
    }

    fn response(version: &str, resources: &[String]) -> String {
        format!(
            r#"{{"version_info": "{version}", "resources": [{}]}}"#,
            resources.join(",")
        )
    }

    fn move_into(path: &Path, text: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    #[test]
    fn a_file_is_read_at_start_and_on_each_move_onto_it_not_on_a_write_in_place() {
        let d = dir("moves");
        let path = d.join("cds.json");
        move_into(&path, &response("1", &[cluster("a")]));
        let (tx, rx) = mpsc::channel();
        let config = FilesConfig {
            clusters: Some(FileSource {
                path: path.clone(),
                watched_directory: None,
            }),
            ..FilesConfig::default()
        };
        let (commands, thread) = spawn(config, EventSink::from(tx)).unwrap();
        let next = || rx.recv_timeout(Duration::from_secs(5)).expect("an event");
        let Event::Clusters(c) = next() else {
            panic!("clusters first")
        };
        assert_eq!((c.version.as_str(), c.upserts.len()), ("1", 1));

        move_into(&path, &response("2", &[cluster("b")]));
        let Event::Clusters(c) = next() else {
            panic!("clusters")
        };
        assert_eq!(c.upserts[0].name, "b");
        assert_eq!(c.removals, ["a"], "State of the World: a is gone");

        std::fs::write(&path, response("3", &[cluster("c")])).unwrap();
        assert!(
            rx.recv_timeout(POLL * 5).is_err(),
            "a write in place is not a change"
        );

        // Refused whole: an unknown field, named from the file's root.
        move_into(
            &path,
            &response("4", &[cluster("d").replacen("\"name\"", "\"nmae\"", 1)]),
        );
        let Event::Failed(f) = next() else {
            panic!("a refused file")
        };
        assert!(
            f.rejected && f.reason.contains("resources[0].nmae"),
            "{f:?}"
        );

        move_into(&path, "version_info: [");
        let Event::Failed(f) = next() else {
            panic!("an unparsable file")
        };
        assert!(!f.rejected, "{f:?}");
        commands.send(FileCommand::Stop).unwrap();
        thread.join().unwrap();
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn an_endpoint_file_holds_one_assignment_for_a_watched_name() {
        let one = DiscoveryResponse::default();
        assert!(one_assignment(&one, &["a".into()])
            .unwrap_err()
            .contains("exactly one"));
        let value: serde_json::Value = serde_json::from_str(&format!(
            r#"{{"resources": [{{"@type": "{ENDPOINTS_TYPE}", "cluster_name": "x"}}],
                 "nonce": "n"}}"#
        ))
        .unwrap();
        let e = resource::file_response(&value).unwrap_err();
        assert_eq!(e.path(), "nonce", "{e}");
        let mut value = value;
        value.as_object_mut().unwrap().remove("nonce");
        let r = resource::file_response(&value).unwrap();
        let e = one_assignment(&r, &["a".into()]).unwrap_err();
        assert!(e.contains("'x'"), "{e}");
        assert!(one_assignment(&r, &["x".into()]).is_ok());
    }
}
