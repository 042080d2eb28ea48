//! Kafka: a replayable source and a transactional exactly-once sink (docs/kafka.md).
//!
//! Both read their connection from the job document's `kafka:` section: `bootstrapServers`,
//! librdkafka `properties` passed through, and secret properties read from environment
//! variables (`propertiesFromEnv`), never logged. Properties Weir relies on for correctness
//! (isolation level, offset handling, transactions) are set by the connectors and cannot be
//! overridden.

pub mod sink;
pub mod source;

pub use sink::{Delivery, KafkaSink, KafkaSinkSpec};
pub use source::{Isolation, KafkaRecord, KafkaSource, KafkaSourceSpec, StartFrom};

use rdkafka::ClientConfig;

use crate::error::{Error, Result};
use crate::spec::{JobDocument, KafkaOptions};

/// Properties the connectors set themselves: overriding one would break exactly-once.
const RESERVED: &[&str] = &[
    "enable.auto.commit",
    "enable.auto.offset.store",
    "isolation.level",
    "transactional.id",
    "enable.idempotence",
    "group.id",
];

/// The job's Kafka connection, or an error naming the missing `kafka:` section.
pub fn options(doc: &JobDocument) -> Result<&KafkaOptions> {
    doc.kafka.as_ref().ok_or_else(|| {
        Error::spec(
            "kafka",
            "the job reads or writes Kafka but the document has no `kafka:` section (bootstrapServers, ...)",
        )
    })
}

/// A librdkafka client configuration from the job's connection settings: the pass-through
/// properties, then the secret ones from the environment. Errors name the setting.
pub fn client_config(options: &KafkaOptions) -> Result<ClientConfig> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &options.bootstrap_servers);
    for (property, value) in &options.properties {
        reject_reserved(property, "kafka.properties")?;
        config.set(property, value);
    }
    for (property, variable) in &options.properties_from_env {
        reject_reserved(property, "kafka.propertiesFromEnv")?;
        let value = std::env::var(variable).map_err(|_| {
            Error::spec(
                format!("kafka.propertiesFromEnv.{property}"),
                format!("environment variable {variable} is not set"),
            )
        })?;
        config.set(property, value);
    }
    // librdkafka logs through the `log` callback; keep its chatter at warnings.
    config.set_log_level(rdkafka::config::RDKafkaLogLevel::Warning);
    Ok(config)
}

fn reject_reserved(property: &str, field: &str) -> Result<()> {
    if RESERVED.contains(&property) {
        return Err(Error::spec(
            format!("{field}.{property}"),
            "is set by Weir's Kafka connectors (exactly-once depends on it) and cannot be overridden",
        ));
    }
    Ok(())
}

/// The job's consumer group and transactional-id prefix default to `weir-<jobId>`: stable
/// across restarts, rescales and upgrades of one job, distinct between jobs.
pub fn default_group_id(doc: &JobDocument) -> String {
    format!("weir-{}", doc.job_id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(kafka: &str) -> JobDocument {
        JobDocument::from_yaml(&format!("job: {{name: x}}\n{kafka}"), "job.yaml")
            .expect("valid document")
    }

    #[test]
    fn a_missing_section_names_it() {
        let err = options(&doc("")).expect_err("no kafka section").to_string();
        assert!(err.contains("kafka"), "{err}");
    }

    #[test]
    fn reserved_and_unset_secret_properties_are_named() {
        let d = doc(
            "kafka: {bootstrapServers: 'h:1', properties: {isolation.level: read_uncommitted}}",
        );
        let err = client_config(options(&d).expect("section"))
            .expect_err("reserved")
            .to_string();
        assert!(err.contains("kafka.properties.isolation.level"), "{err}");

        let d = doc(
            "kafka: {bootstrapServers: 'h:1', propertiesFromEnv: {sasl.password: WEIR_TEST_UNSET_VARIABLE}}",
        );
        let err = client_config(options(&d).expect("section"))
            .expect_err("unset")
            .to_string();
        assert!(
            err.contains("kafka.propertiesFromEnv.sasl.password"),
            "{err}"
        );
        assert!(err.contains("WEIR_TEST_UNSET_VARIABLE"), "{err}");
    }

    #[test]
    fn secrets_come_from_the_environment() {
        // PATH is always set, and no test changes it.
        let d = doc("kafka: {bootstrapServers: 'h:1', propertiesFromEnv: {sasl.password: PATH}}");
        let config = client_config(options(&d).expect("section")).expect("config");
        assert_eq!(
            config.get("sasl.password"),
            std::env::var("PATH").ok().as_deref()
        );
        assert_eq!(config.get("bootstrap.servers"), Some("h:1"));
    }
}
