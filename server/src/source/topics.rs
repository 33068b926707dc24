//! The Kafka topics events are read from: the shared vitals topic, and a
//! topic of its own for each hospital onboarded with one (read from the
//! moment it is onboarded, without a restart).
//!
//! Everything past the source (archive file names, the commit gate,
//! checkpoints, the engine's per-partition watermarks) knows a partition by
//! one `i32`. Each topic therefore has a *source number*, stored with its
//! hospital and never reused, and partition `p` of topic number `s` is
//! stream partition `s × PARTITIONS_PER_TOPIC + p`; the shared topic is
//! number 0, so its partitions keep their own numbers (and existing
//! archives and checkpoints stay valid).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Partitions a topic may have (a larger partition number is not read).
pub const PARTITIONS_PER_TOPIC: i32 = 100_000;
/// Highest source number: stream partitions stay within `i32`.
pub const MAX_SOURCE: u32 = (i32::MAX / PARTITIONS_PER_TOPIC) as u32 - 1;

/// One topic read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    pub name: String,
    /// 0 for the shared topic; a hospital topic's stored number.
    pub source: u32,
    /// The hospital whose events it carries (`None`: the shared topic, any
    /// hospital).
    pub hospital: Option<String>,
}

/// A topic with whether it is still to be read: one no longer read keeps
/// its numbers, so what was read of it can still be handed over and
/// committed when it is let go.
#[derive(Debug, Clone)]
struct Entry {
    topic: Topic,
    reading: bool,
}

impl Topic {
    fn base(&self) -> i32 {
        self.source as i32 * PARTITIONS_PER_TOPIC
    }
}

/// The topics read, shared by the API (which adds and removes hospital
/// topics) and the Kafka source (which notices a change by its version).
#[derive(Debug, Clone, Default)]
pub struct Topics {
    inner: Arc<RwLock<Vec<Entry>>>,
    version: Arc<AtomicU64>,
    /// Off on an instance told not to read hospital topics (`[kafka]
    /// hospital_topics = false`): adding one then does nothing.
    hospitals: bool,
}

impl Topics {
    /// The shared topic alone, and hospitals' topics as they are added
    /// unless `hospitals` is false.
    pub fn new(shared: &str, hospitals: bool) -> Self {
        let topics = Self {
            hospitals: true,
            ..Self::default()
        };
        topics.add(Topic {
            name: shared.to_string(),
            source: 0,
            hospital: None,
        });
        Self {
            hospitals,
            ..topics
        }
    }

    /// Starts reading `topic` (replacing one of the same name).
    pub fn add(&self, topic: Topic) {
        if topic.hospital.is_some() && !self.hospitals {
            return;
        }
        let mut all = self.inner.write().expect("topics lock");
        all.retain(|e| e.topic.name != topic.name);
        all.push(Entry {
            topic,
            reading: true,
        });
        self.version.fetch_add(1, Ordering::Release);
    }

    /// Stops reading the topic of `hospital`; whether one was read.
    pub fn remove_hospital(&self, hospital: &str) -> bool {
        let mut all = self.inner.write().expect("topics lock");
        let mut removed = false;
        for e in all
            .iter_mut()
            .filter(|e| e.reading && e.topic.hospital.as_deref() == Some(hospital))
        {
            e.reading = false;
            removed = true;
        }
        if removed {
            self.version.fetch_add(1, Ordering::Release);
        }
        removed
    }

    /// Makes the hospital topics read exactly `wanted` (the shared topic is
    /// left alone), changing the version only if something changed: what
    /// another instance onboarded or retired, read from the shared store.
    pub fn sync_hospitals(&self, wanted: &[Topic]) {
        if !self.hospitals {
            return;
        }
        let mut all = self.inner.write().expect("topics lock");
        let mut changed = false;
        for e in all.iter_mut().filter(|e| e.topic.hospital.is_some()) {
            let keep = wanted.contains(&e.topic);
            if e.reading != keep {
                e.reading = keep;
                changed = true;
            }
        }
        for w in wanted {
            if !all.iter().any(|e| e.topic == *w) {
                all.retain(|e| e.topic.name != w.name);
                all.push(Entry {
                    topic: w.clone(),
                    reading: true,
                });
                changed = true;
            }
        }
        if changed {
            self.version.fetch_add(1, Ordering::Release);
        }
    }

    /// Changes with every add or remove.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The topics to read.
    pub fn reading(&self) -> Vec<Topic> {
        let all = self.inner.read().expect("topics lock");
        all.iter()
            .filter(|e| e.reading)
            .map(|e| e.topic.clone())
            .collect()
    }

    /// The names of the topics to read.
    pub fn names(&self) -> Vec<String> {
        self.reading().into_iter().map(|t| t.name).collect()
    }

    /// Every topic ever read by this process, by name, read or not now.
    pub fn get(&self, name: &str) -> Option<Topic> {
        let all = self.inner.read().expect("topics lock");
        all.iter()
            .find(|e| e.topic.name == name)
            .map(|e| e.topic.clone())
    }

    /// The stream partition of partition `partition` of `topic`; `None` for a
    /// topic never read or a partition number past the range.
    pub fn stream_partition(&self, topic: &str, partition: i32) -> Option<i32> {
        if !(0..PARTITIONS_PER_TOPIC).contains(&partition) {
            return None;
        }
        self.get(topic).map(|t| t.base() + partition)
    }

    /// The topic and Kafka partition of a stream partition.
    pub fn kafka_partition(&self, stream: i32) -> Option<(Topic, i32)> {
        let (source, partition) = (
            stream.div_euclid(PARTITIONS_PER_TOPIC),
            stream.rem_euclid(PARTITIONS_PER_TOPIC),
        );
        let all = self.inner.read().expect("topics lock");
        all.iter()
            .find(|e| e.topic.source as i32 == source)
            .map(|e| (e.topic.clone(), partition))
    }
}

/// The topics of the hospitals onboarded with one and not retired, as the
/// shared store has them (another instance's onboarding included).
pub async fn hospital_topics(
    hospitals: &catalog::hospitals::HospitalStore,
) -> Result<Vec<Topic>, catalog::CatalogError> {
    let (all, _damaged) = hospitals.list().await?;
    Ok(all
        .into_iter()
        .filter(|h| h.retired_at_ms.is_none())
        .filter_map(|h| {
            h.topic.map(|t| Topic {
                name: t.name,
                source: t.source,
                hospital: Some(h.id),
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_of_each_topic_map_to_their_own_stream_partitions_and_back() {
        let topics = Topics::new("vitals", true);
        let v0 = topics.version();
        topics.add(Topic {
            name: "vitals-h7".into(),
            source: 3,
            hospital: Some("H7".into()),
        });
        assert_ne!(topics.version(), v0);
        // The shared topic keeps its partition numbers.
        assert_eq!(topics.stream_partition("vitals", 5), Some(5));
        assert_eq!(topics.stream_partition("vitals-h7", 5), Some(300_005));
        assert_eq!(topics.stream_partition("other", 5), None);
        assert_eq!(
            topics.stream_partition("vitals", PARTITIONS_PER_TOPIC),
            None
        );
        let (topic, p) = topics.kafka_partition(300_005).unwrap();
        assert_eq!((topic.name.as_str(), p), ("vitals-h7", 5));
        assert_eq!(topic.hospital.as_deref(), Some("H7"));
        assert_eq!(topics.kafka_partition(5).unwrap().0.name, "vitals");
        assert_eq!(topics.kafka_partition(200_000), None);
        // The highest source number still fits.
        let top = MAX_SOURCE as i32 * PARTITIONS_PER_TOPIC + PARTITIONS_PER_TOPIC - 1;
        assert!(top > 0);

        // Syncing to what is already read changes nothing.
        let h7 = topics.get("vitals-h7").unwrap();
        let v = topics.version();
        topics.sync_hospitals(std::slice::from_ref(&h7));
        assert_eq!(topics.version(), v);
        // Retired elsewhere: no longer read; onboarded elsewhere: read.
        let h8 = Topic {
            name: "vitals-h8".into(),
            source: 4,
            hospital: Some("H8".into()),
        };
        topics.sync_hospitals(std::slice::from_ref(&h8));
        assert_ne!(topics.version(), v);
        assert_eq!(
            topics.names(),
            vec!["vitals".to_string(), "vitals-h8".into()]
        );
        topics.sync_hospitals(&[h7, h8]);
        assert_eq!(topics.names().len(), 3);
        assert!(topics.remove_hospital("H7"));
        assert!(!topics.remove_hospital("H7"));
        assert_eq!(
            topics.names(),
            vec!["vitals".to_string(), "vitals-h8".to_string()]
        );
        // No longer read, still known: what was read of it can be committed.
        assert_eq!(topics.stream_partition("vitals-h7", 5), Some(300_005));

        // An instance that reads no hospital topics adds none.
        let shared_only = Topics::new("vitals", false);
        shared_only.add(h7_again());
        shared_only.sync_hospitals(&[h7_again()]);
        assert_eq!(shared_only.names(), vec!["vitals".to_string()]);
    }

    fn h7_again() -> Topic {
        Topic {
            name: "vitals-h7".into(),
            source: 3,
            hospital: Some("H7".into()),
        }
    }
}
