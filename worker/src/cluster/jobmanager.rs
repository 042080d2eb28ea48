//! The JobManager process: the job driver with an executor that deploys onto TaskManagers.
//!
//! TaskManagers connect to the RPC port and register their slots. Each attempt waits until
//! enough slots are registered (reporting how many it is waiting for), assigns subtask `i` of
//! every vertex to one slot, and sends each TaskManager its share. A TaskManager whose
//! connection drops or whose heartbeats stop is removed, and if it ran part of the current
//! attempt, the attempt fails and the driver restarts it from the latest checkpoint as soon
//! as enough slots are back.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufReader, BufWriter};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::tls::{Connection, PeerTls};
use super::wire::{
    Deployment as WireDeployment, PROTOCOL_VERSION, ToJobManager, ToTaskManager, WireControl,
};
use super::{Heartbeat, recv_control, send_control};
use crate::error::{Error, Result};
use crate::runtime::driver::{
    AttemptPlan, Deployment, DriverOptions, Executor, JobOutcome, TaskHandle, run_job,
};
use crate::runtime::graph::JobGraph;
use crate::runtime::job::{JobCommand, JobHandle};
use crate::runtime::{TaskEvent, TaskId};
use crate::spec::JobDocument;

#[derive(Debug, Clone)]
pub struct JobManagerOptions {
    /// Where TaskManagers connect.
    pub rpc_bind: SocketAddr,
    pub heartbeat: Heartbeat,
    pub progress_interval: Duration,
    /// Mutual TLS with the TaskManagers (`cluster::tls`).
    pub tls: Option<PeerTls>,
}

/// Longest the JobManager waits for TaskManagers to confirm an attempt's tasks stopped.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(30);
/// The same when the process is terminating: well within Kubernetes' 30 s grace period (the
/// tasks are fenced either way; this only lets them stop cleanly).
const TERMINATING_CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts TaskManagers on `options.rpc_bind` and runs the job on them until it ends.
pub fn run_job_manager(
    doc: Arc<JobDocument>,
    graph: &JobGraph,
    rt: &tokio::runtime::Handle,
    options: &JobManagerOptions,
    job: &JobHandle,
    commands: &Receiver<JobCommand>,
) -> Result<JobOutcome> {
    let cluster = Cluster::start(options.rpc_bind, options.heartbeat, options.tls.clone())?;
    let mut executor = ClusterExecutor { cluster };
    let driver = DriverOptions {
        progress_interval: options.progress_interval,
        prefer_newer_checkpoint: true,
    };
    crate::metrics::global()
        .slots_required
        .set(doc.parallelism as i64);
    run_job(doc, graph, rt, &driver, &mut executor, job, commands)
}

/// Registered TaskManagers and the attempt running on them; shared by the connection
/// threads, the heartbeat monitor and the executor.
struct Cluster {
    state: Mutex<ClusterState>,
    changed: Condvar,
}

#[derive(Default)]
struct ClusterState {
    next_connection: u64,
    /// By connection number: registration order.
    task_managers: BTreeMap<u64, TaskManagerEntry>,
    attempt: Option<ActiveAttempt>,
    /// The job's record counts, from registrations and heartbeats.
    counters: crate::metrics::ClusterCounters,
}

struct TaskManagerEntry {
    tm_id: String,
    slots: u32,
    data_address: String,
    outbox: Sender<ToTaskManager>,
    socket: TcpStream,
    last_seen: Instant,
    /// Per-operator counters from its latest heartbeat.
    operators: Vec<crate::metrics::OperatorTotals>,
}

struct ActiveAttempt {
    epoch: u64,
    events: Sender<TaskEvent>,
    /// Connection number -> subtasks it runs.
    placement: BTreeMap<u64, Vec<u32>>,
    /// Connections whose tasks have stopped (or that are gone).
    ended: HashSet<u64>,
}

impl ClusterState {
    fn slots(&self) -> u32 {
        self.task_managers.values().map(|t| t.slots).sum()
    }

    fn publish_gauges(&self) {
        let metrics = crate::metrics::global();
        metrics.task_managers.set(self.task_managers.len() as i64);
        metrics.slots_registered.set(self.slots() as i64);
    }

    /// The job's per-operator counters (`weir_records_*_total`, which the progress line reads)
    /// and the `weir_cluster_*` gauges.
    fn publish_counters(&self) {
        let metrics = crate::metrics::global();
        metrics.publish_job_totals(&self.counters.totals());
        metrics.publish_cluster_totals(self.task_managers.values().map(|t| t.operators.as_slice()));
    }
}

impl Cluster {
    fn start(bind: SocketAddr, heartbeat: Heartbeat, tls: Option<PeerTls>) -> Result<Arc<Cluster>> {
        let listener =
            TcpListener::bind(bind).map_err(|e| Error::io(format!("RPC listener {bind}"), e))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| Error::io("RPC listener", e))?;
        tracing::info!(%local_addr, "waiting for TaskManagers");
        let cluster = Arc::new(Cluster {
            state: Mutex::new(ClusterState::default()),
            changed: Condvar::new(),
        });
        {
            let cluster = cluster.clone();
            std::thread::Builder::new()
                .name("rpc-accept".into())
                .spawn(move || {
                    for stream in listener.incoming() {
                        let Ok(stream) = stream else { continue };
                        let (cluster, tls) = (cluster.clone(), tls.clone());
                        let _ = std::thread::Builder::new()
                            .name("tm-conn".into())
                            .spawn(move || cluster.serve(stream, heartbeat, tls.as_ref()));
                    }
                })
                .map_err(|e| Error::io("RPC listener thread", e))?;
        }
        {
            let cluster = cluster.clone();
            std::thread::Builder::new()
                .name("heartbeat-monitor".into())
                .spawn(move || cluster.monitor(heartbeat))
                .map_err(|e| Error::io("heartbeat monitor thread", e))?;
        }
        Ok(cluster)
    }

    fn lock(&self) -> MutexGuard<'_, ClusterState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Declares TaskManagers that missed heartbeats lost, by closing their connection (the
    /// connection thread then removes them).
    fn monitor(&self, heartbeat: Heartbeat) {
        loop {
            std::thread::sleep(heartbeat.interval.min(Duration::from_millis(500)));
            let state = self.lock();
            for entry in state.task_managers.values() {
                let silent = entry.last_seen.elapsed();
                if silent > heartbeat.timeout {
                    tracing::warn!(tm = %entry.tm_id, ?silent, "TaskManager missed heartbeats; declaring it lost");
                    let _ = entry.socket.shutdown(Shutdown::Both);
                }
            }
        }
    }

    /// One TaskManager connection, from registration until it is lost.
    fn serve(&self, socket: TcpStream, heartbeat: Heartbeat, tls: Option<&PeerTls>) {
        let peer = match socket.peer_addr() {
            Ok(peer) => peer,
            Err(_) => return,
        };
        let _ = socket.set_nodelay(true);
        let stream = match Connection::server(socket, tls) {
            Ok(stream) => stream,
            Err(e) => {
                super::tls::refused("rpc", &peer.to_string(), &e);
                return;
            }
        };
        let (Ok(write_half), Ok(socket)) = (stream.try_clone(), stream.socket().try_clone()) else {
            return;
        };
        let mut input = BufReader::new(stream);
        let mut buf = Vec::new();
        let _ = input
            .get_ref()
            .socket()
            .set_read_timeout(Some(heartbeat.timeout));
        let register = recv_control::<ToJobManager>(&mut input, &mut buf);
        let _ = input.get_ref().socket().set_read_timeout(None);
        let Ok(Some(ToJobManager::Register {
            protocol,
            tm_id,
            slots,
            data_port,
            data_host,
            operators,
        })) = register
        else {
            tracing::warn!(%peer, "connection did not start with a registration; closing it");
            return;
        };
        if protocol != PROTOCOL_VERSION {
            let reason = format!(
                "TaskManager {tm_id} speaks wire protocol {protocol}, this JobManager {PROTOCOL_VERSION}: run the same Weir version (image) for both"
            );
            tracing::error!(%peer, "{reason}");
            let mut out = BufWriter::new(write_half);
            let _ = send_control(&mut out, &ToTaskManager::Refused { reason });
            return;
        }
        let host = data_host.unwrap_or_else(|| peer.ip().to_string());
        let data_address = if host.contains(':') {
            format!("[{host}]:{data_port}")
        } else {
            format!("{host}:{data_port}")
        };
        let (outbox, outgoing) = crossbeam_channel::unbounded::<ToTaskManager>();
        let connection = {
            let mut state = self.lock();
            let connection = state.next_connection;
            state.next_connection += 1;
            state.task_managers.insert(
                connection,
                TaskManagerEntry {
                    tm_id: tm_id.clone(),
                    slots,
                    data_address: data_address.clone(),
                    outbox,
                    socket,
                    last_seen: Instant::now(),
                    operators: operators.clone(),
                },
            );
            state.counters.registered(connection, &operators);
            state.publish_gauges();
            tracing::info!(tm = %tm_id, slots, data = %data_address, registered_slots = state.slots(), "TaskManager registered");
            connection
        };
        self.changed.notify_all();

        let writer = std::thread::Builder::new()
            .name("tm-writer".into())
            .spawn(move || {
                let mut out = BufWriter::new(write_half);
                loop {
                    let message = match outgoing.recv_timeout(heartbeat.interval) {
                        Ok(message) => message,
                        Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                            ToTaskManager::Heartbeat
                        }
                        Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                    };
                    if send_control(&mut out, &message).is_err() {
                        break;
                    }
                }
                let _ = out.get_ref().socket().shutdown(Shutdown::Both);
            });

        let reason = loop {
            let message = match recv_control::<ToJobManager>(&mut input, &mut buf) {
                Ok(Some(message)) => message,
                Ok(None) => break "connection closed".to_string(),
                Err(e) => break e.to_string(),
            };
            let mut state = self.lock();
            if let Some(entry) = state.task_managers.get_mut(&connection) {
                entry.last_seen = Instant::now();
            }
            match message {
                ToJobManager::Register { .. } => {}
                ToJobManager::Heartbeat { operators } => {
                    state.counters.reported(connection, &operators);
                    if let Some(entry) = state.task_managers.get_mut(&connection) {
                        entry.operators = operators;
                    }
                    state.publish_counters();
                }
                ToJobManager::Event { epoch, event } => match &state.attempt {
                    Some(attempt) if attempt.epoch == epoch => {
                        let _ = attempt.events.send(event.into());
                    }
                    // Fencing: an event of an attempt that is over.
                    _ => {
                        tracing::debug!(tm = %tm_id, epoch, "dropping an event of another attempt")
                    }
                },
                ToJobManager::AttemptEnded { epoch } => {
                    if let Some(attempt) = state.attempt.as_mut().filter(|a| a.epoch == epoch) {
                        attempt.ended.insert(connection);
                        drop(state);
                        self.changed.notify_all();
                    }
                }
            }
        };

        // Lost: forget it, and fail the attempt it was part of.
        let _ = input.get_ref().socket().shutdown(Shutdown::Both);
        let mut state = self.lock();
        state.task_managers.remove(&connection);
        state.counters.ended(connection);
        state.publish_gauges();
        state.publish_counters();
        tracing::warn!(tm = %tm_id, %reason, registered_slots = state.slots(), "TaskManager lost");
        if let Some(attempt) = state.attempt.as_mut()
            && let Some(subtasks) = attempt.placement.get(&connection)
            && attempt.ended.insert(connection)
        {
            let _ = attempt.events.send(TaskEvent::Failed {
                task: TaskId {
                    vertex: 0,
                    subtask: subtasks.first().copied().unwrap_or(0),
                },
                error: Error::TaskManagerLost {
                    task_manager: tm_id.clone(),
                    reason,
                },
            });
        }
        drop(state);
        self.changed.notify_all();
        if let Ok(writer) = writer {
            // The writer ends once the entry (holding its outbox) is gone and it notices.
            let _ = writer.join();
        }
    }
}

struct ClusterExecutor {
    cluster: Arc<Cluster>,
}

impl ClusterExecutor {
    /// Blocks until enough slots are registered. `None` when the user cancels meanwhile.
    fn wait_for_slots(
        &self,
        needed: u32,
        job: &JobHandle,
        commands: &Receiver<JobCommand>,
    ) -> Result<Option<MutexGuard<'_, ClusterState>>> {
        let mut last_report: Option<Instant> = None;
        let mut state = self.cluster.lock();
        loop {
            crate::runtime::shutdown::check()?;
            let have = state.slots();
            if have >= needed {
                return Ok(Some(state));
            }
            if last_report.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                tracing::info!(
                    registered_slots = have,
                    required_slots = needed,
                    task_managers = state.task_managers.len(),
                    "waiting for task slots"
                );
                last_report = Some(Instant::now());
            }
            while let Ok(command) = commands.try_recv() {
                match command {
                    JobCommand::Cancel => return Ok(None),
                    JobCommand::Checkpoint => {}
                    JobCommand::Savepoint { trigger_id, .. } => job.savepoint_finished(
                        &trigger_id,
                        Err(format!(
                            "the job is not running: waiting for task slots ({have} of {needed})"
                        )),
                    ),
                }
            }
            state = self
                .cluster
                .changed
                .wait_timeout(state, Duration::from_millis(200))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Executor for ClusterExecutor {
    fn deploy(
        &mut self,
        plan: &AttemptPlan<'_>,
        events: Sender<TaskEvent>,
        commands: &Receiver<JobCommand>,
    ) -> Result<Option<Deployment>> {
        let parallelism = plan.doc.parallelism;
        let job_json = serde_json::to_string(plan.doc.as_ref())
            .map_err(|e| Error::codec("job document", e))?;
        let Some(mut state) = self.wait_for_slots(parallelism, plan.job, commands)? else {
            return Ok(None);
        };

        // Fill slots in registration order: subtask i runs in the i-th slot.
        let mut placement: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
        let mut peers = Vec::with_capacity(parallelism as usize);
        let mut owner = Vec::with_capacity(parallelism as usize);
        'fill: for (&connection, entry) in &state.task_managers {
            for _ in 0..entry.slots {
                if peers.len() == parallelism as usize {
                    break 'fill;
                }
                placement
                    .entry(connection)
                    .or_default()
                    .push(peers.len() as u32);
                peers.push(entry.data_address.clone());
                owner.push(connection);
            }
        }
        let epoch = plan.epoch;
        state.attempt = Some(ActiveAttempt {
            epoch,
            events,
            placement: placement.clone(),
            ended: HashSet::new(),
        });
        let restore = plan.restore.as_ref().map(|r| r.uri());
        for (connection, subtasks) in &placement {
            let entry = &state.task_managers[connection];
            tracing::info!(epoch, tm = %entry.tm_id, ?subtasks, "deploying");
            let _ = entry.outbox.send(ToTaskManager::Deploy(WireDeployment {
                epoch,
                attempt_id: plan.attempt_id.clone(),
                job: job_json.clone(),
                restore: restore.clone(),
                subtasks: subtasks.clone(),
                peers: peers.clone(),
            }));
        }

        let specs = plan.graph.topology(parallelism, plan.doc.max_parallelism)?;
        let tasks = specs
            .into_iter()
            .map(|spec| {
                let outbox = state.task_managers[&owner[spec.id.subtask as usize]]
                    .outbox
                    .clone();
                let task = spec.id;
                TaskHandle {
                    id: spec.id,
                    name: spec.name.clone(),
                    is_source: spec.is_source,
                    control: Box::new(move |message| {
                        let _ = outbox.send(ToTaskManager::Control {
                            epoch,
                            task,
                            message: WireControl::from(&message),
                        });
                    }),
                }
            })
            .collect();
        drop(state);

        let cluster = self.cluster.clone();
        Ok(Some(Deployment {
            tasks,
            stop: Box::new(move || cluster.cancel_attempt(epoch)),
        }))
    }
}

impl Cluster {
    /// Cancels the attempt on every TaskManager still running part of it and waits (bounded)
    /// until they confirm or are lost.
    fn cancel_attempt(&self, epoch: u64) {
        let started = Instant::now();
        let mut state = self.lock();
        let Some(attempt) = state.attempt.as_ref().filter(|a| a.epoch == epoch) else {
            return;
        };
        for connection in attempt.placement.keys() {
            if !attempt.ended.contains(connection)
                && let Some(entry) = state.task_managers.get(connection)
            {
                let _ = entry.outbox.send(ToTaskManager::Cancel { epoch });
            }
        }
        loop {
            let pending: Vec<u64> = match &state.attempt {
                Some(a) if a.epoch == epoch => a
                    .placement
                    .keys()
                    .filter(|c| !a.ended.contains(c) && state.task_managers.contains_key(c))
                    .copied()
                    .collect(),
                _ => Vec::new(),
            };
            if pending.is_empty() {
                break;
            }
            let timeout = match crate::runtime::shutdown::requested() {
                Some(_) => TERMINATING_CANCEL_TIMEOUT,
                None => CANCEL_TIMEOUT,
            };
            if started.elapsed() > timeout {
                tracing::warn!(
                    epoch,
                    ?pending,
                    "TaskManagers did not confirm the cancellation in time; going on (their work is fenced)"
                );
                break;
            }
            state = self
                .changed
                .wait_timeout(state, Duration::from_millis(200))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        state.attempt = None;
        tracing::info!(epoch, elapsed = ?started.elapsed(), "attempt stopped");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::jobs::JobRegistry;
    use crate::runtime::graph::TaskInfo;
    use crate::spec::JobDocument;

    /// The JobManager places and controls the tasks `topology` lists; the TaskManagers run
    /// the tasks `instantiate_part` builds. They must be the same tasks, in the same order.
    #[test]
    fn topology_lists_the_tasks_instantiate_builds() {
        let registry = JobRegistry::builtin();
        for job in [
            "word-count",
            "url-count",
            "state-machine",
            "minute-bars",
            "window-check",
            "nexmark",
        ] {
            let path = format!("{}/../examples/jobs/{job}.yaml", env!("CARGO_MANIFEST_DIR"));
            let yaml = std::fs::read_to_string(&path).expect("example job");
            let doc = Arc::new(JobDocument::from_yaml(&yaml, &path).expect("job document"));
            let graph = registry.build(doc.clone()).expect("graph").graph;
            for parallelism in [1, 3] {
                let topology = graph
                    .topology(parallelism, doc.max_parallelism)
                    .expect("topology");
                let built: Vec<TaskInfo> = graph
                    .instantiate(parallelism, doc.max_parallelism)
                    .expect("instantiate")
                    .into_iter()
                    .map(|spec| TaskInfo {
                        id: spec.id,
                        name: spec.name,
                        is_source: spec.is_source,
                    })
                    .collect();
                assert!(topology.len() >= 2 * parallelism as usize, "{job}");
                assert_eq!(topology, built, "{job} at parallelism {parallelism}");
            }
        }
    }
}
