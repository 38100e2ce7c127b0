//! [`BackendConfig`]: which backend, and its settings.
//!
//! A tagged enum (`backend = "embedded"`), so that settings of one backend
//! cannot be given to another: figment names the offending key.

use std::{path::PathBuf, sync::Arc};

use serde::{Deserialize, Serialize};

use crate::{Backend, Clock, QueueError};

/// Which queue backend to run, with its settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase", deny_unknown_fields)]
pub enum BackendConfig {
    /// SQLite on local disk. Durable, needs no broker. The default.
    Embedded {
        /// Folder for the database file (`queue.db`). Created if missing.
        #[serde(default = "default_embedded_path")]
        path: PathBuf,
        /// What a 2xx survives: `power_loss` (the default, an fsync per
        /// commit) or `process_crash` (no fsync per commit; a power cut can
        /// take back the last ~100 ms). See [`crate::embedded::Durability`].
        #[serde(default)]
        durability: crate::embedded::Durability,
    },
    /// Process memory. **Not durable**: for examples and tests only.
    Memory {},
    /// RabbitMQ: durable quorum queues, publisher confirms.
    #[cfg(feature = "rabbitmq")]
    Rabbitmq(crate::rabbitmq::RabbitConfig),
    /// AWS SQS, or any server with its API: standard and FIFO queues.
    #[cfg(feature = "sqs")]
    Sqs(crate::sqs::SqsConfig),
    /// Kafka, or any broker with its protocol: `acks=all`, consumer groups.
    #[cfg(feature = "kafka")]
    Kafka(crate::kafka::KafkaConfig),
}

fn default_embedded_path() -> PathBuf {
    PathBuf::from("./spillway-data")
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self::Embedded { path: default_embedded_path(), durability: Default::default() }
    }
}

impl BackendConfig {
    /// The spool in front of the broker, where `queue.spool` is set.
    #[cfg(feature = "spool")]
    pub fn spool(&self) -> Option<&crate::spool::SpoolConfig> {
        match self {
            Self::Embedded { .. } | Self::Memory {} => None,
            #[cfg(feature = "rabbitmq")]
            Self::Rabbitmq(c) => c.spool.as_ref(),
            #[cfg(feature = "sqs")]
            Self::Sqs(c) => c.spool.as_ref(),
            #[cfg(feature = "kafka")]
            Self::Kafka(c) => c.spool.as_ref(),
        }
    }

    /// The backend's name as written in the config.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Embedded { .. } => "embedded",
            Self::Memory {} => "memory",
            #[cfg(feature = "rabbitmq")]
            Self::Rabbitmq(_) => "rabbitmq",
            #[cfg(feature = "sqs")]
            Self::Sqs(_) => "sqs",
            #[cfg(feature = "kafka")]
            Self::Kafka(_) => "kafka",
        }
    }
}

/// Opens the configured backend.
pub async fn connect(config: &BackendConfig) -> Result<Arc<dyn Backend>, QueueError> {
    match config {
        BackendConfig::Embedded { path, durability } => {
            let backend =
                crate::embedded::EmbeddedBackend::open_with(path, *durability, Clock::system()).await?;
            Ok(Arc::new(backend))
        }
        BackendConfig::Memory {} => Ok(Arc::new(crate::memory::memory_backend()?)),
        #[cfg(feature = "rabbitmq")]
        BackendConfig::Rabbitmq(cfg) => Ok(Arc::new(crate::rabbitmq::RabbitBackend::connect(cfg).await?)),
        #[cfg(feature = "sqs")]
        BackendConfig::Sqs(cfg) => Ok(Arc::new(crate::sqs::SqsBackend::connect(cfg).await?)),
        #[cfg(feature = "kafka")]
        BackendConfig::Kafka(cfg) => Ok(Arc::new(crate::kafka::KafkaBackend::connect(cfg).await?)),
    }
}
