//! The TaskManager process: registers its slots with the JobManager, heartbeats, runs the
//! subtasks it is deployed, and moves keyed-exchange data to and from other TaskManagers.
//!
//! It keeps no job state of its own: when the JobManager goes away (connection closed or
//! heartbeats missed) it cancels everything and registers again, with this JobManager or
//! its replacement, which redeploys from the latest completed checkpoint.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::exchange::{pump_incoming, pump_outgoing};
use super::tls::{Connection, PeerTls};
use super::wire::{
    ChannelId, DataHello, DataHelloReply, Deployment, StoreResolver, ToJobManager, ToTaskManager,
    WireTaskEvent, decode_control, encode_control,
};
use super::{Heartbeat, Stores, frame, recv_control, send_control};
use crate::checkpoint::RestorePoint;
use crate::error::{Error, Result};
use crate::jobs::JobRegistry;
use crate::runtime::local::{RunningTasks, TaskResources, spawn_tasks};
use crate::runtime::remote::{IncomingChannel, OutgoingChannel};
use crate::runtime::shutdown;
use crate::runtime::{ControlMessage, TaskEvent, TaskId};
use crate::spec::JobDocument;
use crate::storage::{Location, ObjectStore};

#[derive(Debug, Clone)]
pub struct TaskManagerOptions {
    /// `host:port` of the JobManager's RPC endpoint.
    pub jobmanager: String,
    pub slots: u32,
    /// Where to listen for data connections from other TaskManagers.
    pub data_bind: SocketAddr,
    /// Host other TaskManagers should use to reach this one; by default the address the
    /// JobManager sees this TaskManager connect from (the pod IP on Kubernetes).
    pub data_host: Option<String>,
    /// Scratch space for RocksDB and in-progress files.
    pub work_dir: PathBuf,
    pub heartbeat: Heartbeat,
    /// Mutual TLS with the JobManager and the other TaskManagers (`cluster::tls`).
    pub tls: Option<PeerTls>,
}

/// Runs until the process is killed, or until SIGTERM/SIGINT: then it drops every control
/// message (no checkpoint, no commit), cancels its tasks, and returns `Error::Terminated`.
pub fn run_task_manager(
    options: TaskManagerOptions,
    registry: JobRegistry,
    rt: tokio::runtime::Handle,
) -> Result<()> {
    let listener = TcpListener::bind(options.data_bind)
        .map_err(|e| Error::io(format!("data listener {}", options.data_bind), e))?;
    let data_port = listener
        .local_addr()
        .map_err(|e| Error::io("data listener", e))?
        .port();
    let data = Arc::new(DataServer {
        state: Mutex::default(),
        tls: options.tls.clone(),
    });
    {
        let data = data.clone();
        std::thread::Builder::new()
            .name("data-accept".into())
            .spawn(move || data.accept(listener))
            .map_err(|e| Error::io("data listener thread", e))?;
    }
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "taskmanager".into());
    let tm_id = format!("{host}-{:08x}", rand::random::<u32>());
    tracing::info!(%tm_id, slots = options.slots, data_port, jobmanager = %options.jobmanager, "TaskManager starting");
    let session_socket: Arc<Mutex<Option<TcpStream>>> = Arc::default();
    {
        // On SIGTERM the session ends at once (its blocking read returns) instead of at the
        // next message from the JobManager.
        let session_socket = session_socket.clone();
        std::thread::Builder::new()
            .name("terminate-watch".into())
            .spawn(move || {
                while shutdown::requested().is_none() {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if let Some(socket) = session_socket
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
                {
                    let _ = socket.shutdown(Shutdown::Both);
                }
            })
            .map_err(|e| Error::io("termination watcher thread", e))?;
    }
    let mut tm = TaskManager {
        tm_id,
        options,
        registry,
        rt,
        data,
        data_port,
        attempt: None,
    };
    let mut waiting_since: Option<Instant> = None;
    loop {
        shutdown::check()?;
        match tm.connect() {
            Ok(stream) => {
                waiting_since = None;
                *session_socket.lock().unwrap_or_else(|e| e.into_inner()) =
                    stream.socket().try_clone().ok();
                let result = tm.session(stream);
                *session_socket.lock().unwrap_or_else(|e| e.into_inner()) = None;
                tm.stop_attempt(None);
                if let Some(signal) = shutdown::requested() {
                    return Err(Error::Terminated { signal });
                }
                match result {
                    // Registering again cannot help: another Weir version is running there.
                    Err(e @ Error::Refused { .. }) => return Err(e),
                    Ok(()) => tracing::warn!("JobManager closed the connection; registering again"),
                    Err(e) => tracing::warn!(error = %e, "lost the JobManager; registering again"),
                }
            }
            Err(e) => {
                let since = *waiting_since.get_or_insert_with(Instant::now);
                tracing::info!(error = %e, waiting = ?since.elapsed(), jobmanager = %tm.options.jobmanager, "waiting for the JobManager");
            }
        }
        shutdown::sleep(Duration::from_secs(1))?;
    }
}

struct TaskManager {
    tm_id: String,
    options: TaskManagerOptions,
    registry: JobRegistry,
    rt: tokio::runtime::Handle,
    data: Arc<DataServer>,
    data_port: u16,
    attempt: Option<LocalAttempt>,
}

/// This TaskManager's share of one attempt.
struct LocalAttempt {
    epoch: u64,
    tasks: RunningTasks,
    controls: HashMap<TaskId, Sender<ControlMessage>>,
    stores: Arc<Stores>,
    /// Outgoing data connections, shut down on cancel.
    sockets: Arc<Mutex<Vec<TcpStream>>>,
    cancelled: Arc<AtomicBool>,
}

impl TaskManager {
    fn connect(&self) -> Result<Connection> {
        let addr = &self.options.jobmanager;
        let resolved = addr
            .to_socket_addrs()
            .map_err(|e| Error::io(format!("resolving JobManager {addr}"), e))?
            .next()
            .ok_or_else(|| Error::spec("jobmanager", format!("{addr} resolves to nothing")))?;
        let stream = TcpStream::connect_timeout(&resolved, Duration::from_secs(5))
            .map_err(|e| Error::io(format!("JobManager {addr}"), e))?;
        let _ = stream.set_nodelay(true);
        Connection::client(stream, self.options.tls.as_ref())
            .map_err(|e| Error::io(format!("TLS handshake with the JobManager {addr}"), e))
    }

    /// One registration with the JobManager, until the connection is lost.
    fn session(&mut self, stream: Connection) -> Result<()> {
        let write_half = stream
            .try_clone()
            .map_err(|e| Error::io("control connection", e))?;
        stream
            .socket()
            .set_read_timeout(Some(self.options.heartbeat.timeout))
            .map_err(|e| Error::io("control connection", e))?;
        let (to_jm, outbox) = crossbeam_channel::unbounded::<ToJobManager>();
        let alive = Arc::new(AtomicBool::new(true));
        let writer = {
            let alive = alive.clone();
            let interval = self.options.heartbeat.interval;
            std::thread::Builder::new()
                .name("jm-writer".into())
                .spawn(move || {
                    let mut out = BufWriter::new(write_half);
                    while alive.load(Ordering::Relaxed) {
                        let message = match outbox.recv_timeout(interval) {
                            Ok(message) => message,
                            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                                ToJobManager::Heartbeat {
                                    operators: crate::metrics::global().operator_totals(),
                                }
                            }
                            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                        };
                        if send_control(&mut out, &message).is_err() {
                            break;
                        }
                    }
                    let _ = out.get_ref().socket().shutdown(Shutdown::Both);
                })
                .map_err(|e| Error::io("control writer thread", e))?
        };
        let _ = to_jm.send(ToJobManager::Register {
            protocol: super::wire::PROTOCOL_VERSION,
            tm_id: self.tm_id.clone(),
            slots: self.options.slots,
            data_port: self.data_port,
            data_host: self.options.data_host.clone(),
            operators: crate::metrics::global().operator_totals(),
        });
        tracing::info!(jobmanager = %self.options.jobmanager, "registered with the JobManager");

        let mut input = BufReader::new(stream);
        let mut buf = Vec::new();
        let result = loop {
            // The read timeout is the heartbeat timeout: the JobManager heartbeats every
            // interval, so silence this long means it is gone.
            let message: ToTaskManager = match recv_control(&mut input, &mut buf) {
                Ok(Some(message)) => message,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            match message {
                ToTaskManager::Heartbeat => {}
                ToTaskManager::Refused { reason } => break Err(Error::Refused { reason }),
                ToTaskManager::Deploy(deployment) => {
                    let epoch = deployment.epoch;
                    self.stop_attempt(Some(&to_jm));
                    if let Err(error) = self.deploy(deployment, &to_jm) {
                        tracing::error!(epoch, error = %error, "deployment failed");
                        let _ = to_jm.send(ToJobManager::Event {
                            epoch,
                            event: WireTaskEvent::from(TaskEvent::Failed {
                                task: TaskId {
                                    vertex: 0,
                                    subtask: 0,
                                },
                                error,
                            }),
                        });
                    }
                }
                ToTaskManager::Control {
                    epoch,
                    task,
                    message,
                } => self.control(epoch, task, message),
                ToTaskManager::Cancel { epoch } => {
                    if self.attempt.as_ref().is_some_and(|a| a.epoch == epoch) {
                        self.stop_attempt(Some(&to_jm));
                    }
                }
            }
        };
        alive.store(false, Ordering::Relaxed);
        drop(to_jm);
        let _ = input.get_ref().socket().shutdown(Shutdown::Both);
        let _ = writer.join();
        result
    }

    fn control(&mut self, epoch: u64, task: TaskId, message: super::wire::WireControl) {
        if shutdown::requested().is_some() {
            // Terminating: no barrier, completion or stop reaches a task any more.
            return;
        }
        let Some(attempt) = self.attempt.as_ref().filter(|a| a.epoch == epoch) else {
            // Fencing: a message for an attempt this TaskManager no longer runs.
            tracing::debug!(epoch, %task, "dropping a control message of another attempt");
            return;
        };
        let Some(control) = attempt.controls.get(&task) else {
            return;
        };
        match message.into_message(attempt.stores.as_ref()) {
            Ok(message) => {
                let _ = control.send(message);
            }
            Err(e) => tracing::error!(error = %e, %task, "cannot apply a control message"),
        }
    }

    /// Cancels the running attempt, waits for its tasks, and tells the JobManager.
    fn stop_attempt(&mut self, to_jm: Option<&Sender<ToJobManager>>) {
        let Some(mut attempt) = self.attempt.take() else {
            return;
        };
        let started = Instant::now();
        attempt.cancelled.store(true, Ordering::Relaxed);
        self.data.end_epoch(attempt.epoch);
        for socket in attempt
            .sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = socket.shutdown(Shutdown::Both);
        }
        attempt.tasks.stop();
        tracing::info!(epoch = attempt.epoch, elapsed = ?started.elapsed(), "attempt cancelled");
        if let Some(to_jm) = to_jm {
            let _ = to_jm.send(ToJobManager::AttemptEnded {
                epoch: attempt.epoch,
            });
        }
    }

    fn deploy(&mut self, deployment: Deployment, to_jm: &Sender<ToJobManager>) -> Result<()> {
        let Deployment {
            epoch,
            attempt_id,
            job,
            restore,
            subtasks,
            peers,
        } = deployment;
        let doc: JobDocument = serde_json::from_str(&job)
            .map_err(|e| Error::spec("job", format!("from the JobManager: {e}")))?;
        doc.validate()?;
        let doc = Arc::new(doc);
        let built = self.registry.build(doc.clone())?;
        let rt = self.rt.clone();
        let job_store = match &doc.checkpointing {
            Some(c) => {
                let location = crate::checkpoint::job_location(&c.storage, doc.job_id())?;
                Some(rt.block_on(ObjectStore::open(&location, &doc.s3))?)
            }
            None => None,
        };
        let restore = match restore {
            Some(uri) => {
                let store = rt.block_on(ObjectStore::open(&Location::parse(&uri)?, &doc.s3))?;
                Some(Arc::new(rt.block_on(RestorePoint::open(store))?))
            }
            None => None,
        };
        let instance =
            built
                .graph
                .instantiate_part(doc.parallelism, doc.max_parallelism, &subtasks)?;
        let stores = Arc::new(Stores::new(rt.clone(), doc.s3.clone()));
        let cancelled = Arc::new(AtomicBool::new(false));
        let sockets = Arc::new(Mutex::new(Vec::new()));
        self.data
            .begin_epoch(epoch, instance.incoming, stores.clone());

        // Task events go to the JobManager tagged with this attempt's epoch.
        let (events_tx, events) = crossbeam_channel::unbounded::<TaskEvent>();
        {
            let to_jm = to_jm.clone();
            std::thread::Builder::new()
                .name(format!("events-{epoch:x}"))
                .spawn(move || {
                    for event in events {
                        let _ = to_jm.send(ToJobManager::Event {
                            epoch,
                            event: event.into(),
                        });
                    }
                })
                .map_err(|e| Error::io("event forwarder thread", e))?;
        }
        let local_dir = self.options.work_dir.join(doc.job_id()).join(&attempt_id);
        let resources = TaskResources {
            doc: &doc,
            rt: &rt,
            job_store,
            restore,
            attempt_id: &attempt_id,
        };
        let ids: Vec<TaskId> = instance.tasks.iter().map(|t| t.id).collect();
        let tasks = spawn_tasks(&resources, instance.tasks, &local_dir, &events_tx)?;
        let controls = ids
            .into_iter()
            .zip(tasks.controls.iter().cloned())
            .collect();
        for channel in instance.outgoing {
            let peer = peers
                .get(channel.id().consumer as usize)
                .cloned()
                .ok_or_else(|| Error::spec("peers", format!("no address for {}", channel.id())))?;
            let (cancelled, sockets) = (cancelled.clone(), sockets.clone());
            let tls = self.options.tls.clone();
            std::thread::Builder::new()
                .name(format!("out-{}", channel.id().consumer))
                .spawn(move || {
                    send_channel(channel, &peer, epoch, tls.as_ref(), &cancelled, &sockets)
                })
                .map_err(|e| Error::io("data sender thread", e))?;
        }
        tracing::info!(
            epoch,
            ?subtasks,
            tasks = tasks.threads.len(),
            "attempt deployed"
        );
        self.attempt = Some(LocalAttempt {
            epoch,
            tasks,
            controls,
            stores,
            sockets,
            cancelled,
        });
        Ok(())
    }
}

/// Connects an outgoing channel to the consumer's TaskManager and pumps it.
fn send_channel(
    channel: Box<dyn OutgoingChannel>,
    peer: &str,
    epoch: u64,
    tls: Option<&PeerTls>,
    cancelled: &AtomicBool,
    sockets: &Mutex<Vec<TcpStream>>,
) {
    let id = channel.id();
    let started = Instant::now();
    let stream = loop {
        if cancelled.load(Ordering::Relaxed) {
            return;
        }
        match handshake(peer, epoch, id, tls) {
            Ok((stream, DataHelloReply::Accepted)) => break stream,
            Ok((_, DataHelloReply::Fenced)) => {
                tracing::debug!(%id, epoch, "data connection fenced");
                return;
            }
            Ok((_, DataHelloReply::NotYet)) => {}
            Err(e) if started.elapsed() > Duration::from_secs(30) => {
                tracing::warn!(%id, %peer, error = %e, "cannot reach the consumer's TaskManager");
                // Dropping the channel makes the producer fail; the JobManager restarts.
                return;
            }
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if let Ok(clone) = stream.socket().try_clone() {
        sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(clone);
    }
    match pump_outgoing(channel, stream, cancelled) {
        Ok(()) => {}
        Err(Error::Cancelled) => {}
        Err(e) if cancelled.load(Ordering::Relaxed) => {
            tracing::debug!(%id, error = %e, "data connection closed on cancel")
        }
        Err(e) => tracing::warn!(%id, error = %e, "data connection failed"),
    }
}

fn handshake(
    peer: &str,
    epoch: u64,
    channel: ChannelId,
    tls: Option<&PeerTls>,
) -> Result<(Connection, DataHelloReply)> {
    let net = |e| Error::io(format!("data connection to {peer}"), e);
    let addr = peer
        .to_socket_addrs()
        .map_err(net)?
        .next()
        .ok_or_else(|| Error::spec("peers", format!("{peer} resolves to nothing")))?;
    let socket = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(net)?;
    let _ = socket.set_nodelay(true);
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(net)?;
    let stream = Connection::client(socket, tls).map_err(net)?;
    let mut out = BufWriter::new(stream.try_clone().map_err(net)?);
    send_control(&mut out, &DataHello { epoch, channel })?;
    let mut input = BufReader::new(stream.try_clone().map_err(net)?);
    let reply: DataHelloReply = recv_control(&mut input, &mut Vec::new())?.ok_or_else(|| {
        net(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed during handshake",
        ))
    })?;
    stream.socket().set_read_timeout(None).map_err(net)?;
    Ok((stream, reply))
}

/// Accepts data connections and hands each to the incoming channel it names, if that
/// channel belongs to the current attempt.
struct DataServer {
    state: Mutex<DataState>,
    tls: Option<PeerTls>,
}

#[derive(Default)]
struct DataState {
    epoch: u64,
    channels: HashMap<ChannelId, Box<dyn IncomingChannel>>,
    stores: Option<Arc<Stores>>,
    sockets: Vec<TcpStream>,
}

impl DataServer {
    fn lock(&self) -> std::sync::MutexGuard<'_, DataState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn begin_epoch(
        &self,
        epoch: u64,
        channels: Vec<Box<dyn IncomingChannel>>,
        stores: Arc<Stores>,
    ) {
        let mut state = self.lock();
        state.epoch = epoch;
        state.channels = channels.into_iter().map(|c| (c.id(), c)).collect();
        state.stores = Some(stores);
    }

    fn end_epoch(&self, epoch: u64) {
        let mut state = self.lock();
        if state.epoch != epoch {
            return;
        }
        state.channels.clear();
        state.stores = None;
        for socket in state.sockets.drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    fn accept(self: Arc<Self>, listener: TcpListener) {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let server = self.clone();
            let _ = std::thread::Builder::new()
                .name("data-in".into())
                .spawn(move || server.serve(stream));
        }
    }

    fn serve(&self, socket: TcpStream) {
        let peer = socket
            .peer_addr()
            .map_or_else(|_| "?".into(), |a| a.to_string());
        let _ = socket.set_nodelay(true);
        let _ = socket.set_read_timeout(Some(Duration::from_secs(10)));
        let stream = match Connection::server(socket, self.tls.as_ref()) {
            Ok(stream) => stream,
            Err(e) => {
                super::tls::refused("data", &peer, &e);
                return;
            }
        };
        let Ok(read_half) = stream.try_clone() else {
            return;
        };
        let mut input = BufReader::new(read_half);
        let mut buf = Vec::new();
        let hello: DataHello = match frame::read_frame(&mut input, &mut buf) {
            Ok(true) => match decode_control(&buf) {
                Ok(hello) => hello,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "bad data connection handshake");
                    return;
                }
            },
            _ => return,
        };
        let (reply, accepted) = {
            let mut state = self.lock();
            if hello.epoch > state.epoch {
                (DataHelloReply::NotYet, None)
            } else if hello.epoch < state.epoch {
                (DataHelloReply::Fenced, None)
            } else {
                match (state.channels.remove(&hello.channel), state.stores.clone()) {
                    (Some(channel), Some(stores)) => {
                        if let Ok(clone) = stream.socket().try_clone() {
                            state.sockets.push(clone);
                        }
                        (DataHelloReply::Accepted, Some((channel, stores)))
                    }
                    _ => (DataHelloReply::Fenced, None),
                }
            }
        };
        let Ok(write_half) = stream.try_clone() else {
            return;
        };
        let mut out = BufWriter::new(write_half);
        let sent = encode_control(&reply)
            .and_then(|payload| {
                frame::write_frame(&mut out, &payload).map_err(|e| Error::io("handshake", e))
            })
            .and_then(|()| std::io::Write::flush(&mut out).map_err(|e| Error::io("handshake", e)));
        drop(out);
        let Some((channel, stores)) = accepted else {
            return;
        };
        if sent.is_err() {
            return;
        }
        let _ = stream.socket().set_read_timeout(None);
        let id = channel.id();
        // `input` may have buffered bytes past the handshake: the producer only sends data
        // after reading the reply, so it has not.
        drop(input);
        let stores: Arc<dyn StoreResolver> = stores;
        match pump_incoming(channel, stream, stores.as_ref()) {
            Ok(()) | Err(Error::Cancelled) => {}
            Err(e) => tracing::warn!(%id, %peer, error = %e, "incoming data connection failed"),
        }
    }
}
