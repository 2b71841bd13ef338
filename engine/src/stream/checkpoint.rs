//! The checkpoint coordinator: which partitions this instance owns, how far each has been
//! processed, which have rows no checkpoint holds yet, and whose turn it is.
//!
//! It does no I/O: the pipeline asks it what to checkpoint, snapshots that partition, and
//! tells it the outcome; what it returns are the offsets that may be committed to Kafka
//! (each only once the checkpoint holding it is saved).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::error::EngineError;

/// A partition and the next offset to read in it (everything before is in the sinks).
pub type PartitionOffset = (i32, i64);

#[derive(Debug)]
pub struct CheckpointCoordinator {
    /// Each partition is checkpointed about this often.
    interval: Duration,
    owned: HashSet<i32>,
    next_offsets: HashMap<i32, i64>,
    /// Partitions with rows since their last checkpoint.
    dirty: HashSet<i32>,
    /// When each partition was last checkpointed (one not checkpointed yet goes first).
    checkpointed_at: HashMap<i32, Instant>,
    /// The last checkpoint of any partition.
    last_checkpoint: Instant,
}

impl CheckpointCoordinator {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            owned: HashSet::new(),
            next_offsets: HashMap::new(),
            dirty: HashSet::new(),
            checkpointed_at: HashMap::new(),
            last_checkpoint: Instant::now(),
        }
    }

    /// Takes `partition` over, resuming at `offset` (its checkpoint's), or at the group's
    /// committed offset when None.
    pub fn assign(&mut self, partition: i32, offset: Option<i64>) {
        self.owned.insert(partition);
        match offset {
            Some(offset) => self.next_offsets.insert(partition, offset),
            None => self.next_offsets.remove(&partition),
        };
    }

    /// A message of `partition` at `offset` is processed (in the sinks or on its way).
    pub fn processed(&mut self, partition: i32, offset: i64) {
        self.processed_all([(partition, offset)]);
    }

    /// A micro-batch's messages, `(partition, offset)`, are processed: each partition's
    /// last offset is taken first and recorded once (a micro-batch holds a few partitions;
    /// three hash updates per message were work on the stream's thread).
    pub fn processed_all(&mut self, messages: impl IntoIterator<Item = (i32, i64)>) {
        let mut last: Vec<(i32, i64)> = Vec::new();
        for (partition, offset) in messages {
            match last.iter_mut().find(|(p, _)| *p == partition) {
                Some((_, last)) => *last = (*last).max(offset),
                None => last.push((partition, offset)),
            }
        }
        for (partition, offset) in last {
            let next = self.next_offsets.entry(partition).or_insert(0);
            *next = (*next).max(offset + 1);
            self.owned.insert(partition);
            self.dirty.insert(partition);
        }
    }

    /// Checkpoints are staggered: one partition at a time, every interval / partitions, so
    /// each partition is still checkpointed about once per interval and the work of one
    /// runs in the background while the stream goes on.
    pub fn due(&self) -> bool {
        let owned = self.owned.len().max(1) as u32;
        !self.dirty.is_empty() && self.last_checkpoint.elapsed() >= self.interval / owned
    }

    /// The dirty partition checkpointed longest ago (never checkpointed first).
    pub fn next_partition(&self) -> Option<i32> {
        self.dirty
            .iter()
            .copied()
            .min_by_key(|p| (self.checkpointed_at.get(p).copied(), *p))
    }

    /// Partitions with rows no checkpoint holds, in order.
    pub fn dirty(&self) -> Vec<i32> {
        let mut dirty: Vec<i32> = self.dirty.iter().copied().collect();
        dirty.sort();
        dirty
    }

    /// Starts `partition`'s checkpoint: returns the offset it holds. The partition is
    /// clean until new rows arrive (also when the save is then refused, so that the others
    /// get their turn; a refusal makes it dirty again, see [`Self::refused`]).
    pub fn begin(&mut self, partition: i32) -> Result<i64, EngineError> {
        let offset = self.next_offsets.get(&partition).copied().ok_or_else(|| {
            EngineError::State(format!("partition {partition} has rows but no offset"))
        })?;
        let now = Instant::now();
        self.checkpointed_at.insert(partition, now);
        self.last_checkpoint = now;
        self.dirty.remove(&partition);
        Ok(offset)
    }

    /// Another instance saved a newer checkpoint of `partition`: try again at its next turn.
    pub fn refused(&mut self, partition: i32) {
        if self.owned.contains(&partition) {
            self.dirty.insert(partition);
        }
    }

    /// The offset to commit to Kafka for a saved checkpoint of `partition` at `offset`:
    /// None when the partition is no longer ours (its new owner commits).
    pub fn saved(&self, partition: i32, offset: i64) -> Option<PartitionOffset> {
        self.owned
            .contains(&partition)
            .then_some((partition, offset))
    }

    /// Every owned partition's next offset, in partition order (to commit after a full
    /// checkpoint: on revoke and at shutdown).
    pub fn offsets(&self) -> Vec<PartitionOffset> {
        let mut offsets: Vec<PartitionOffset> =
            self.next_offsets.iter().map(|(p, o)| (*p, *o)).collect();
        offsets.sort();
        offsets
    }

    pub fn partitions(&self) -> Vec<i32> {
        let mut partitions: Vec<i32> = self.owned.iter().copied().collect();
        partitions.sort();
        partitions
    }

    /// Lets go of `partition` (revoked or lost).
    pub fn forget(&mut self, partition: i32) {
        self.owned.remove(&partition);
        self.next_offsets.remove(&partition);
        self.checkpointed_at.remove(&partition);
        self.dirty.remove(&partition);
    }

    /// Lets go of everything (after an error: a restart resumes from the last checkpoint).
    pub fn clear(&mut self) {
        self.owned.clear();
        self.next_offsets.clear();
        self.dirty.clear();
    }

    /// Marks a full checkpoint (every dirty partition) as done now.
    pub fn all_done(&mut self) {
        self.last_checkpoint = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_follow_processed_messages_and_partitions_take_turns() {
        let mut coordinator = CheckpointCoordinator::new(Duration::ZERO);
        coordinator.assign(0, Some(10));
        coordinator.assign(1, None);
        assert!(!coordinator.due(), "nothing processed yet");
        coordinator.processed(0, 10);
        coordinator.processed_all([(0, 11), (1, 5), (0, 9)]);
        assert!(coordinator.due());
        assert_eq!(coordinator.offsets(), vec![(0, 12), (1, 6)]);
        // Never checkpointed: lowest partition first, then the other.
        let first = coordinator.next_partition().expect("dirty");
        assert_eq!(coordinator.begin(first).expect("offset"), 12);
        let second = coordinator.next_partition().expect("dirty");
        assert_eq!((first, second), (0, 1));
        assert_eq!(coordinator.begin(second).expect("offset"), 6);
        assert!(coordinator.next_partition().is_none());
        // A refused save makes the partition dirty again; a forgotten one commits nothing.
        coordinator.refused(0);
        assert_eq!(coordinator.dirty(), vec![0]);
        coordinator.forget(1);
        assert_eq!(coordinator.saved(1, 6), None);
        assert_eq!(coordinator.saved(0, 12), Some((0, 12)));
    }

    #[test]
    fn checkpoints_are_staggered_over_the_interval() {
        let mut coordinator = CheckpointCoordinator::new(Duration::from_secs(3600));
        coordinator.assign(0, None);
        coordinator.processed(0, 0);
        coordinator.begin(0).expect("offset");
        coordinator.processed(0, 1);
        assert!(
            !coordinator.due(),
            "the partition's turn comes an interval later"
        );
    }
}
