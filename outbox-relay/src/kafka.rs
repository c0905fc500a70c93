//! Where Kafka is and how to talk to it: the bootstrap servers and the
//! operator's librdkafka settings (TLS, SASL, tuning), shared by every client
//! the crate makes (the producer, `tail`'s consumer, the admin client).

use rdkafka::ClientConfig;

#[derive(Debug, Clone, Default)]
pub struct KafkaSettings {
    pub brokers: String,
    /// librdkafka properties set by the operator, applied in order after a
    /// client's own defaults, so they win over them.
    pub overrides: Vec<(String, String)>,
}

impl KafkaSettings {
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            overrides: Vec::new(),
        }
    }

    /// `bootstrap.servers`, then a client's `defaults`, then the overrides.
    pub fn client_config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in defaults {
            config.set(*key, *value);
        }
        for (key, value) in &self.overrides {
            config.set(key, value);
        }
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_win_over_defaults() {
        let mut kafka = KafkaSettings::new("b:9092");
        kafka.overrides.push(("linger.ms".into(), "5".into()));
        let config = kafka.client_config(&[("linger.ms", "0"), ("acks", "all")]);
        assert_eq!(config.get("bootstrap.servers"), Some("b:9092"));
        assert_eq!(config.get("linger.ms"), Some("5"));
        assert_eq!(config.get("acks"), Some("all"));
    }
}
