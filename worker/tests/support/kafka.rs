//! A real Kafka-protocol broker for integration tests: `noida-db` (pinned, installed by
//! scripts/install-kafka-broker.sh) started on a free loopback port per test, killed on drop.
//!
//! Its limits (docs/kafka.md): one broker, data in memory, and no transaction timeout: a
//! transaction nobody finishes stays open (and holds back `read_committed` readers) until its
//! transactional id is initialised again.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// What a reader sees: `read_committed` (only committed transactions) or everything written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    ReadCommitted,
    ReadUncommitted,
}

/// One record as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
}

impl ReadRecord {
    pub fn value_str(&self) -> &str {
        std::str::from_utf8(&self.value).expect("UTF-8 record value")
    }
}

/// A running broker; killed (SIGKILL) on drop.
pub struct KafkaBroker {
    pub port: u16,
    data_dir: tempfile::TempDir,
    logs: tempfile::TempDir,
    binary: PathBuf,
    child: Option<Child>,
    runs: u32,
    rt: tokio::runtime::Runtime,
}

impl KafkaBroker {
    /// Starts a broker on a free port and waits until it accepts connections. Panics with
    /// instructions when the binary is not installed.
    pub fn start() -> KafkaBroker {
        let binary = find_binary().unwrap_or_else(|| {
            panic!(
                "the noida-db Kafka broker is not installed (looked at $WEIR_KAFKA_BROKER, \
                 ~/.cache/weir-tools/bin/noida-db and PATH); run scripts/install-kafka-broker.sh \
                 (scripts/test.sh does)"
            )
        });
        let mut broker = KafkaBroker {
            port: super::free_port(),
            data_dir: tempfile::Builder::new()
                .prefix("weir-kafka-data-")
                .tempdir()
                .expect("temp dir for broker data"),
            logs: tempfile::Builder::new()
                .prefix("weir-kafka-logs-")
                .tempdir()
                .expect("temp dir for broker logs"),
            binary,
            child: None,
            runs: 0,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime for the Kafka admin client"),
        };
        broker.spawn();
        broker
    }

    /// `127.0.0.1:<port>`, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The job document's `kafka:` section for this broker (YAML, one line).
    pub fn job_section(&self) -> String {
        format!("kafka: {{bootstrapServers: '{}'}}", self.bootstrap())
    }

    /// SIGKILLs the broker. Its data is in memory: a restarted broker starts empty unless
    /// noida-db saved it on a clean stop.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The broker's output so far (for failure messages).
    pub fn log(&self) -> String {
        (1..=self.runs)
            .map(|run| {
                std::fs::read_to_string(self.logs.path().join(format!("broker-{run}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n--- restarted ---\n")
    }

    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.bootstrap());
        config
    }

    pub fn create_topic(&self, topic: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> =
            self.client_config().create().expect("Kafka admin client");
        let results = self
            .rt
            .block_on(admin.create_topics(
                &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
                &AdminOptions::new().operation_timeout(Some(CLIENT_TIMEOUT)),
            ))
            .unwrap_or_else(|e| panic!("create topic {topic}: {e}"));
        for result in results {
            result.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
        }
    }

    /// Grows `topic` to `total` partitions.
    pub fn add_partitions(&self, topic: &str, total: usize) {
        let admin: AdminClient<DefaultClientContext> =
            self.client_config().create().expect("Kafka admin client");
        let results = self
            .rt
            .block_on(admin.create_partitions(
                &[NewPartitions::new(topic, total)],
                &AdminOptions::new().operation_timeout(Some(CLIENT_TIMEOUT)),
            ))
            .unwrap_or_else(|e| panic!("add partitions to {topic}: {e}"));
        for result in results {
            result.unwrap_or_else(|(t, e)| panic!("add partitions to {t}: {e}"));
        }
    }

    /// Writes records (key, value) to `partition` (or by key hash when `None`), waiting
    /// until every one is acknowledged.
    pub fn produce(&self, topic: &str, partition: Option<i32>, records: &[(Option<&str>, &str)]) {
        let producer: ThreadedProducer<DefaultProducerContext> = self
            .client_config()
            .set("enable.idempotence", "true")
            .create()
            .expect("Kafka producer");
        for (key, value) in records {
            let mut record = BaseRecord::<str, str>::to(topic).payload(*value);
            if let Some(key) = key {
                record = record.key(*key);
            }
            if let Some(p) = partition {
                record = record.partition(p);
            }
            producer
                .send(record)
                .unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
        }
        producer
            .flush(CLIENT_TIMEOUT)
            .unwrap_or_else(|e| panic!("flush producer for {topic}: {e}"));
    }

    /// Partitions of `topic` whose last stable offset is below the high watermark: an open
    /// transaction holds them (a read_committed client's watermark is the last stable offset).
    pub fn partitions_with_open_transactions(&self, topic: &str) -> Vec<i32> {
        let client = |isolation: &str| -> BaseConsumer {
            self.client_config()
                .set("isolation.level", isolation)
                .create()
                .expect("Kafka client")
        };
        let (committed, uncommitted) = (client("read_committed"), client("read_uncommitted"));
        (0..self.partitions(topic))
            .filter(|&p| {
                let (_, stable) = committed
                    .fetch_watermarks(topic, p, CLIENT_TIMEOUT)
                    .expect("last stable offset");
                let (_, high) = uncommitted
                    .fetch_watermarks(topic, p, CLIENT_TIMEOUT)
                    .expect("high watermark");
                stable < high
            })
            .collect()
    }

    /// Number of partitions of `topic`.
    pub fn partitions(&self, topic: &str) -> i32 {
        let consumer: BaseConsumer = self.client_config().create().expect("Kafka consumer");
        let metadata = consumer
            .fetch_metadata(Some(topic), CLIENT_TIMEOUT)
            .unwrap_or_else(|e| panic!("metadata of {topic}: {e}"));
        metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map_or(0, |t| t.partitions().len() as i32)
    }

    /// Every record of `topic` a reader with `isolation` sees now, in partition and offset
    /// order. Reads each partition until its end (for `read_committed`, up to the first open
    /// transaction), so it returns promptly on a quiet topic.
    pub fn read_all(&self, topic: &str, isolation: Isolation) -> Vec<ReadRecord> {
        let partitions = self.partitions(topic);
        let consumer: BaseConsumer = self
            .client_config()
            .set(
                "group.id",
                format!("weir-test-reader-{}", std::process::id()),
            )
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set(
                "isolation.level",
                match isolation {
                    Isolation::ReadCommitted => "read_committed",
                    Isolation::ReadUncommitted => "read_uncommitted",
                },
            )
            .create()
            .expect("Kafka consumer");
        let mut assignment = TopicPartitionList::new();
        for p in 0..partitions {
            assignment
                .add_partition_offset(topic, p, Offset::Beginning)
                .expect("assign partition");
        }
        consumer.assign(&assignment).expect("assign partitions");
        let mut at_end = BTreeMap::new();
        let mut records = Vec::new();
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        while at_end.len() < partitions as usize {
            assert!(
                Instant::now() < deadline,
                "reading {topic} ({isolation:?}): only partitions {:?} of {partitions} reached their end \
                 within {CLIENT_TIMEOUT:?} (an open transaction holds read_committed readers back)",
                at_end.keys().collect::<Vec<_>>()
            );
            match consumer.poll(Duration::from_millis(200)) {
                None => {}
                Some(Ok(message)) => records.push(ReadRecord {
                    partition: message.partition(),
                    offset: message.offset(),
                    key: message.key().map(<[u8]>::to_vec),
                    value: message.payload().unwrap_or_default().to_vec(),
                }),
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                    at_end.insert(p, ());
                }
                Some(Err(e)) => panic!("reading {topic}: {e}"),
            }
        }
        records.sort_by_key(|r| (r.partition, r.offset));
        records
    }

    fn spawn(&mut self) {
        self.runs += 1;
        let log_path = self.logs.path().join(format!("broker-{}.log", self.runs));
        let log = std::fs::File::create(&log_path).expect("create broker log file");
        let log_err = log.try_clone().expect("clone broker log file handle");
        let child = Command::new(&self.binary)
            .args([
                "start",
                "--only",
                "kafka",
                "--host",
                "127.0.0.1",
                "--kafka-port",
            ])
            .arg(self.port.to_string())
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.binary.display()));
        self.child = Some(child);
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "the Kafka broker exited at start-up ({status}):\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the Kafka broker did not listen on {address} within {STARTUP_TIMEOUT:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        self.kill();
    }
}

fn find_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("WEIR_KAFKA_BROKER") {
        return Some(PathBuf::from(path));
    }
    let home = std::env::var_os("HOME").map(PathBuf::from)?;
    let tools = std::env::var_os("WEIR_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".cache/weir-tools"));
    let installed = tools.join("bin/noida-db");
    if installed.exists() {
        return Some(installed);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("noida-db"))
            .find(|p| p.exists())
    })
}
