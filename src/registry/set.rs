//! [`Registry`]: the set of live tracked tasks, with the key index, the
//! waits for an end or for idleness, and the outcome log.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, RandomState};
use std::task::{Poll, Waker};

use hashbrown::HashTable;
use slab::Slab;

use super::cell::TaskCell;
use super::counts::{LadderCounts, TaskCounts};
use super::guard::{EntryGuard, HoldsRegistry};
use super::state::*;
use crate::sync::{AfterUnlock, Arc, Mutex, lock};
use crate::task::{TaskId, TaskOutcome};
use crate::wait_list::{WaitKey, WaitList};

/// A key as the registry holds it: shared between the entry and the key index
/// without cloning the user's value (a `std` `Arc`: keys are not modelled).
pub(crate) type SharedKey<K> = std::sync::Arc<K>;

/// What [`Registry::insert_as`] gives back.
#[derive(Debug)]
pub(crate) struct Inserted<T, K: Eq + Hash + Clone, O: HoldsRegistry<T, K>> {
    /// The new task's guard, for its tracked future.
    pub(crate) guard: EntryGuard<T, K, O>,
    /// The task that held the key before, still alive and tracked: its
    /// owner cancels it.
    pub(crate) replaced: Option<Arc<TaskCell<T>>>,
}

/// A live task with its key, as [`Registry::pending_keyed`] lists them.
#[derive(Debug)]
pub(crate) struct LiveEntry<T, K> {
    pub(crate) cell: Arc<TaskCell<T>>,
    pub(crate) key: Option<SharedKey<K>>,
}

// ===== impl Registry =====

struct Entry<T, K> {
    cell: Arc<TaskCell<T>>,
    key: Option<SharedKey<K>>,
    /// The key's hash, computed once at insertion (before the lock): the
    /// entry leaves the index by this hash and its slot, never calling the
    /// user's `Hash` or `Eq` again (invariant 4).
    hash: u64,
}

/// One key of the index: the slot of the newest entry under it, with the
/// key's hash (the key itself is the entry's).
#[derive(Debug, Clone, Copy)]
struct KeySlot {
    hash: u64,
    slot: usize,
}

/// The registry's data under its mutex (as the tree's node `Locked`).
struct Locked<T, K> {
    entries: Slab<Entry<T, K>>,
    /// Key → slot of the newest entry under it (invariant 4); the key of a
    /// [`KeySlot`] is `entries[slot].key`.
    keys: HashTable<KeySlot>,
    /// Woken when `entries` becomes empty; a drained key reads as woken, so
    /// a waiter that saw the registry idle stays done (`poll_idle`).
    idle: WaitList,
    /// Woken when the task with this id ends: one list per waited-on task, so
    /// an end finds its waiters without scanning every other task's (mass
    /// per-key cancels stay O(n)).
    ended: HashMap<TaskId, WaitList>,
    /// Ends not yet taken by `poll_next_end`, when the owner records them.
    log: Option<VecDeque<(TaskId, TaskOutcome)>>,
    /// Woken when `log` grows or `entries` becomes empty.
    log_waiters: WaitList,
    counts: TaskCounts,
}

/// The set of live tracked tasks, optionally keyed.
pub(crate) struct Registry<T, K = ()> {
    inner: Mutex<Locked<T, K>>,
    /// Hashes keys outside the lock.
    hasher: RandomState,
    pub(crate) ladder: LadderCounts,
}

impl<T, K: Eq + Hash + Clone> Registry<T, K> {
    /// An empty registry; with `record_ends`, every end is queued for
    /// [`poll_next_end`](Self::poll_next_end) until taken.
    pub(crate) fn new(record_ends: bool) -> Self {
        Registry {
            inner: Mutex::new(Locked {
                entries: Slab::new(),
                keys: HashTable::new(),
                idle: WaitList::new(),
                ended: HashMap::new(),
                log: record_ends.then(VecDeque::new),
                log_waiters: WaitList::new(),
                counts: TaskCounts::default(),
            }),
            hasher: RandomState::new(),
            ladder: LadderCounts::default(),
        }
    }

    /// The slot `key` maps to; `Eq` runs under the lock, on the caller's
    /// thread, and a panic in it changes nothing.
    fn find(inner: &Locked<T, K>, hash: u64, key: &K) -> Option<usize> {
        inner
            .keys
            .find(hash, |ks| {
                inner.entries[ks.slot].key.as_deref() == Some(key)
            })
            .map(|ks| ks.slot)
    }

    /// Tracks a new task. With a key, the key now maps to it, and the task that
    /// held the key before (still alive, still tracked) is returned. The guard
    /// keeps a clone of `owner` (whatever holds this registry), so a task
    /// holds one reference to its tracker, not one per layer.
    #[cfg(test)]
    pub(crate) fn insert<O: HoldsRegistry<T, K>>(
        owner: &O,
        meta: T,
        key: Option<K>,
    ) -> Inserted<T, K, O> {
        Self::insert_as(owner, TaskId::next(), Watch::Tracker, meta, key)
    }

    /// As `insert` (the tests'), with an id made beforehand and the task's
    /// [`Watch`].
    pub(crate) fn insert_as<O: HoldsRegistry<T, K>>(
        owner: &O,
        id: TaskId,
        watch: Watch,
        meta: T,
        key: Option<K>,
    ) -> Inserted<T, K, O> {
        let this = owner.registry();
        let cell = Arc::new(TaskCell::new(id, watch, meta));
        // Hashed and wrapped before the lock: a panicking `Hash` fails this
        // call with nothing changed, and under the lock only references are
        // counted.
        let hash = key.as_ref().map_or(0, |k| this.hasher.hash_one(k));
        let key = key.map(SharedKey::new);
        let mut guard = lock(&this.inner);
        let inner = &mut *guard;
        let slot = inner.entries.vacant_entry().key();
        // A slot is 4 bytes in every task's future (bytes per task); more
        // than 2^32 live tasks would need over a terabyte.
        let slot32 = u32::try_from(slot).expect("cancel_scope: more than 2^32 live tasks");
        // The lookup (the only user code here, `Eq`) comes before any write,
        // so a panic in it leaves the registry as it was.
        let taken = match &key {
            Some(k) => Self::find(inner, hash, k),
            None => None,
        };
        let replaced = match (&key, taken) {
            // A taken key keeps its index entry and points it at the new slot:
            // no key is dropped here (tokio-util's `duplicate_keys_drop`).
            (Some(_), Some(old)) => {
                let ks = inner
                    .keys
                    .find_mut(hash, |ks| ks.slot == old)
                    .expect("the index entry just found");
                ks.slot = slot;
                Some(inner.entries[old].cell.clone())
            }
            (Some(_), None) => {
                inner
                    .keys
                    .insert_unique(hash, KeySlot { hash, slot }, |ks| ks.hash);
                None
            }
            (None, _) => None,
        };
        inner.entries.insert(Entry {
            cell: cell.clone(),
            key,
            hash,
        });
        inner.counts.spawned += 1;
        drop(guard);
        let guard = EntryGuard {
            owner: owner.clone(),
            _key: std::marker::PhantomData,
            cell,
            slot: slot32,
            outcome: TaskOutcome::Aborted,
        };
        Inserted { guard, replaced }
    }

    pub(crate) fn len(&self) -> usize {
        lock(&self.inner).entries.len()
    }

    /// A snapshot of the per-task counters, taken under the lock.
    pub(crate) fn task_counts(&self) -> TaskCounts {
        let inner = lock(&self.inner);
        TaskCounts {
            tracked: inner.entries.len() as u64,
            ..inner.counts
        }
    }

    /// The live tasks, as of now (invariant 1: none ended).
    pub(crate) fn pending(&self) -> Vec<Arc<TaskCell<T>>> {
        let inner = lock(&self.inner);
        inner.entries.iter().map(|(_, e)| e.cell.clone()).collect()
    }

    /// The live tasks with their keys.
    pub(crate) fn pending_keyed(&self) -> Vec<LiveEntry<T, K>> {
        let inner = lock(&self.inner);
        inner
            .entries
            .iter()
            .map(|(_, e)| LiveEntry {
                cell: e.cell.clone(),
                key: e.key.clone(),
            })
            .collect()
    }

    /// The task that `key` maps to. `Hash` runs before the lock, `Eq` under
    /// it; a panic in either fails this call and changes nothing.
    pub(crate) fn get(&self, key: &K) -> Option<Arc<TaskCell<T>>> {
        let hash = self.hasher.hash_one(key);
        let inner = lock(&self.inner);
        Self::find(&inner, hash, key).map(|slot| inner.entries[slot].cell.clone())
    }

    /// The keys whose task satisfies `pred`, cloned after the lock.
    pub(crate) fn keys_where(&self, pred: impl Fn(&TaskCell<T>) -> bool) -> Vec<K> {
        let shared: Vec<SharedKey<K>> = {
            let inner = lock(&self.inner);
            inner
                .keys
                .iter()
                .map(|ks| &inner.entries[ks.slot])
                .filter(|e| pred(&e.cell))
                .filter_map(|e| e.key.clone())
                .collect()
        };
        shared.iter().map(|k| K::clone(k)).collect()
    }

    /// Ready once no task is tracked, or once the registry was idle at any
    /// moment since this waiter registered (as tokio-util's `TaskTracker::wait`,
    /// a waiter woken by idleness stays done even if a task is spawned before
    /// it re-polls). `key` keeps the registration across polls and must be
    /// passed to [`release_idle`](Self::release_idle).
    pub(crate) fn poll_idle(&self, waker: &Waker, key: &mut Option<WaitKey>) -> Poll<()> {
        let fresh = waker.clone();
        let mut after = AfterUnlock::new();
        let mut inner = lock(&self.inner);
        if inner.entries.is_empty() || key.is_some_and(|k| inner.idle.was_woken(k)) {
            after.drop_waker(inner.idle.remove(key));
            *key = None;
            after.drop_waker(Some(fresh));
            return Poll::Ready(());
        }
        after.drop_waker(inner.idle.register(key, fresh));
        Poll::Pending
    }

    /// Ready once `cell` has ended. `key` must be passed to
    /// [`release_ended`](Self::release_ended).
    pub(crate) fn poll_ended(
        &self,
        cell: &TaskCell<T>,
        waker: &Waker,
        key: &mut Option<WaitKey>,
    ) -> Poll<()> {
        let fresh = waker.clone();
        let mut after = AfterUnlock::new();
        let mut inner = lock(&self.inner);
        if cell.is_ended() {
            // `remove` already took and woke every waiter of this task.
            *key = None;
            after.drop_waker(Some(fresh));
            return Poll::Ready(());
        }
        let list = inner.ended.entry(cell.id).or_default();
        after.drop_waker(list.register(key, fresh));
        Poll::Pending
    }

    /// The next recorded end, oldest first; `Ready(None)` once nothing is
    /// recorded and no task is alive. `None` if ends are not recorded. `key`
    /// must be passed to [`release_next_end`](Self::release_next_end).
    pub(crate) fn poll_next_end(
        &self,
        waker: &Waker,
        key: &mut Option<WaitKey>,
    ) -> Option<Poll<Option<(TaskId, TaskOutcome)>>> {
        let fresh = waker.clone();
        let mut after = AfterUnlock::new();
        let mut inner = lock(&self.inner);
        let inner = &mut *inner;
        let log = inner.log.as_mut()?;
        let next = log.pop_front();
        if next.is_some() || inner.entries.is_empty() {
            after.drop_waker(inner.log_waiters.remove(key));
            after.drop_waker(Some(fresh));
            return Some(Poll::Ready(next));
        }
        after.drop_waker(inner.log_waiters.register(key, fresh));
        Some(Poll::Pending)
    }

    /// The next recorded end, oldest first, taken now or `None` if none is
    /// recorded (whether tasks are alive or not; as `JoinSet::try_join_next`).
    /// The outer `None`: ends are not recorded. Races with an end: the end is
    /// logged under this same lock, so it is taken exactly once, here or by a
    /// later call (registry invariant 1).
    pub(crate) fn try_next_end(&self) -> Option<Option<(TaskId, TaskOutcome)>> {
        let mut inner = lock(&self.inner);
        Some(inner.log.as_mut()?.pop_front())
    }

    /// Marks a live task closing; `true` the first time. Under the lock, so
    /// the gauge and the bit change together and `remove` undoes both.
    pub(crate) fn mark_closing(&self, cell: &TaskCell<T>) -> bool {
        self.mark(cell, CLOSING, |t| &mut t.closing)
    }

    /// Marks a live task stuck; `true` the first time (see `mark_closing`).
    pub(crate) fn mark_stuck(&self, cell: &TaskCell<T>) -> bool {
        self.mark(cell, STUCK, |t| &mut t.stuck)
    }

    fn mark(&self, cell: &TaskCell<T>, bit: u64, gauge: fn(&mut TaskCounts) -> &mut u64) -> bool {
        let mut inner = lock(&self.inner);
        // Invariant 1: `ENDED` is only set under this lock, so it cannot
        // appear between this check and the `set`.
        if cell.is_ended() || cell.set(bit).has(bit) {
            return false;
        }
        *gauge(&mut inner.counts) += 1;
        true
    }

    /// Whether ends are recorded for `poll_next_end`.
    pub(crate) fn records_ends(&self) -> bool {
        lock(&self.inner).log.is_some()
    }

    /// Drops a registration made by `poll_next_end`.
    pub(crate) fn release_next_end(&self, key: &mut Option<WaitKey>) {
        if key.is_some() {
            let mut after = AfterUnlock::new();
            let mut inner = lock(&self.inner);
            after.drop_waker(inner.log_waiters.remove(key));
        }
    }

    /// Drops a registration made by `poll_idle`.
    pub(crate) fn release_idle(&self, key: &mut Option<WaitKey>) {
        if key.is_some() {
            let mut after = AfterUnlock::new();
            let mut inner = lock(&self.inner);
            after.drop_waker(inner.idle.remove(key));
        }
    }

    /// Drops a registration made by `poll_ended` for the task `id`.
    pub(crate) fn release_ended(&self, id: TaskId, key: &mut Option<WaitKey>) {
        if key.is_some() {
            let mut after = AfterUnlock::new();
            let mut inner = lock(&self.inner);
            if let Some(list) = inner.ended.get_mut(&id) {
                after.drop_waker(list.remove(key));
                if list.is_empty() {
                    inner.ended.remove(&id);
                }
            }
            *key = None;
        }
    }

    /// Removes the entry at `slot` (the task's end); returns whether the
    /// registry is now idle.
    pub(super) fn remove(&self, slot: usize, cell: &TaskCell<T>, outcome: TaskOutcome) -> bool {
        // Declared before `after` and the guard, so dropped last: user keys
        // go once the lock is released and every waiter is woken.
        let entry: Entry<T, K>;
        let idle;
        let mut after = AfterUnlock::new();
        {
            let mut inner = lock(&self.inner);
            let inner = &mut *inner;
            entry = inner.entries.remove(slot);
            if entry.key.is_some() {
                // Invariant 4: by the stored hash and the slot, so no user
                // code runs here and the index and the slab change together.
                // Not found when a newer entry took the key over.
                if let Ok(ks) = inner.keys.find_entry(entry.hash, |ks| ks.slot == slot) {
                    ks.remove();
                }
            }
            // Invariant 1: in the same critical section as the removal.
            let prev = match cell.transition(|s| Some(s.ended(outcome))) {
                Ok(prev) | Err(prev) => prev,
            };
            // Gauges: the bits were set under this lock (`mark`).
            let counts = &mut inner.counts;
            if prev.is_stuck() {
                counts.stuck -= 1;
            }
            if prev.is_closing() {
                counts.closing -= 1;
            }
            *match outcome {
                TaskOutcome::Completed => &mut counts.completed,
                TaskOutcome::Cancelled => &mut counts.cancelled,
                TaskOutcome::Panicked => &mut counts.panicked,
                TaskOutcome::Aborted | TaskOutcome::Stuck => &mut counts.aborted,
            } += 1;
            idle = inner.entries.is_empty();
            if idle {
                after.wake_all(inner.idle.drain());
            }
            if let Some(log) = &mut inner.log {
                log.push_back((cell.id, outcome));
                after.wake_all(inner.log_waiters.drain());
            }
            // Checked first: hashing the id costs more than the rest of an
            // uncontended removal, and a waited-on end is rare.
            if !inner.ended.is_empty() {
                if let Some(mut list) = inner.ended.remove(&cell.id) {
                    after.wake_all(list.drain());
                }
            }
        }
        // Wakes first, then the user's keys (a panicking key `Drop` can no
        // longer cost a wakeup).
        drop(after);
        drop(entry);
        idle
    }
}
