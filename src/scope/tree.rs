//! The cancel scope tree: runtime-free state, waiters, shields and deadlines.
//!
//! A [`Node`] is one cancel scope. `CancelScope` handles (in `handle.rs`) are thin
//! `Arc<Node>` wrappers; every state change is a `pub(crate)` free function here,
//! as in tokio-util's `tree_node.rs`.
//!
//! # Shape
//!
//! A child holds a strong reference to its parent, and an attached child is also
//! held by its parent's `children` slab, so that a cancel can walk down. The cycle
//! is broken by counting handles: when a node has no handle left and no attached
//! child, nobody can observe it any more and it *detaches* from its parent. A
//! shielded scope is never attached (nothing above it may cancel it), so it is a
//! root that only remembers its parent's id.
//!
//! # Invariants
//!
//! 1. `CANCELLED` is set once, under the node's lock, and never cleared; the
//!    reason bit and the `ORIGIN` bit are written in the same store, and the
//!    origin's `message` slot is filled before that store in the same critical
//!    section, so readers that see `CANCELLED` see the reason, and (at the
//!    origin, invariant 7) the message, that won.
//! 2. The waiter slab is drained under the lock in the same critical section that
//!    sets `CANCELLED`, and no waiter is registered on a cancelled node. A waiter
//!    that checks `CANCELLED` under the lock therefore either registers before the
//!    drain (and is woken) or sees the flag (no lost wakeup).
//! 3. A child created under the lock of a cancelled parent is born cancelled with
//!    the parent's reason; otherwise it is attached before the lock is released.
//!    With invariant 1 this means no child of a cancelled node is ever left
//!    uncancelled.
//! 4. Once a node is detached (`handles == 0`, no attached children), nothing can
//!    create a handle to it again: handles are only cloned from handles.
//! 5. Effective deadlines only move earlier: `own_deadline` is tightened with
//!    `min`, and `deadline` of every attached descendant is tightened under its
//!    lock in the same walk, so a waiter that reads `deadline` under its node's
//!    lock either sees the new value or is seen by the walk.
//!
//! 6. Detaching drains the waiter slab and wakes it, as cancelling does, and
//!    nothing registers on a detached node. The only waiters a detached node
//!    can have hold no handle (a `CancellationToken` link, a token watcher):
//!    they learn that the scope is gone and can never be cancelled.
//! 7. `ORIGIN` marks the one node of a cancel where it started (the node
//!    `cancel` was called on); a born-cancelled child (invariant 3) copies its
//!    parent's bits without it. So a cancelled node without `ORIGIN` was marked
//!    by a walk from an ancestor or born under a cancelled parent: in both cases
//!    its parent is cancelled by that same cancel, and the walk up the `parent`
//!    links from any cancelled node ends at its origin. A shielded node is only
//!    ever cancelled as an origin.
//! 8. `SUBTREE_DONE` is set on a node once a cancel walk that started there
//!    has finished: every descendant is cancelled (later children are born
//!    cancelled, invariant 3). A cancel that finds its node cancelled but
//!    not done walks the subtree too, with the reason found there, so no
//!    `cancel()` returns while a descendant is still uncancelled, even when
//!    another thread's cancel of the same node is still walking it.
//! 9. A node's deadline timer runs only while it is needed, and at most one
//!    runs. `timer_running` is set only by the call that says "start a timer
//!    task" ([`arm_timer`], [`pin_timer`]) and cleared only by that task's
//!    [`timer_poll`] returning `Stop`, both under the node's lock. `armed`
//!    counts the waiters that armed the timer here (each once, until its
//!    [`disarm_timer`]); `pinned` is set by a [`tighten_deadline`] that found
//!    waiters below, which may have armed another node. `timer_poll` says
//!    `Stop` exactly when the node is cancelled or detached, or `armed == 0`
//!    and not `pinned`; whatever makes that true (a cancel, a detach, the last
//!    `disarm_timer`) takes `timer_waker` and wakes it after the lock. So once
//!    the last armed waiter of an unpinned node has left, its timer ends at
//!    its next poll; a waiter that arms before that poll keeps it running
//!    (the count is read under the same lock), one that arms after it starts
//!    a new one. A pinned timer keeps the older lifetime: until the deadline
//!    fires, or the node is cancelled or detached.
//!
//! # Messages
//!
//! A cancel's message is stored once, in the origin's `message` slot, and read
//! by walking up to the origin (invariant 7) rather than copied into every
//! node the cancel reaches. The walk down then costs a message-less cancel
//! nothing, and a cancel with a message no per-descendant reference-count
//! update: both run O(descendants) lock/store steps, as before. A reader pays
//! O(depth to the origin) atomic loads, without a lock, and only when it asks
//! (typically once per cancelled task, when it builds its error, at depth one
//! or two). The flag test, [`is_cancelled`], is untouched: one load.
//!
//! # Deadlock safety
//!
//! Locks are taken parent before child, and at most two at a time: `detach`
//! holds a parent and the child leaving it; `cancel` holds a parent and, in
//! turn, each of its leaf children, which it marks under the parent's lock.
//! Neither holds a node's lock while it takes an ancestor's. `cancel` collects
//! the children with children of their own to visit next, with no lock held
//! between nodes; `tighten_deadline` and every other function hold one node's
//! lock at a time. Under a node's lock no waker is cloned, dropped or
//! woken (the rule of `crate::sync`): wakers come in cloned, and replaced,
//! removed or drained ones leave through an [`AfterUnlock`], so a waker whose
//! `drop` or `wake` re-enters the tree (makes a child, cancels) cannot deadlock.

use std::sync::OnceLock;
use std::task::Waker;

use slab::Slab;

use super::message::CancelMessage;
use crate::sync::{AfterUnlock, Arc, AtomicI64, AtomicU8, AtomicUsize, Mutex, Ordering, lock};

/// The scope is cancelled (for good: invariant 1).
const CANCELLED: u8 = 0b01;
/// Set together with `CANCELLED` when the cancellation came from a deadline;
/// never set alone.
const BY_DEADLINE: u8 = 0b10;
/// Set together with `CANCELLED` on the node where the cancel started, never
/// alone, never copied to a child (invariant 7).
const ORIGIN: u8 = 0b100;
/// A cancel walk from this node finished (invariant 8); never copied to a
/// child.
const SUBTREE_DONE: u8 = 0b1000;

/// Deadline value meaning "no deadline".
pub(crate) const NO_DEADLINE: i64 = i64::MAX;

/// Why a scope was cancelled, taken from the scope where the cancellation started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CancelReason {
    /// [`cancel`](crate::CancelScope::cancel) was called, on this scope or an ancestor.
    Requested,
    /// The deadline of this scope or of an ancestor passed.
    Deadline,
}

impl CancelReason {
    fn bits(self) -> u8 {
        match self {
            CancelReason::Requested => CANCELLED,
            CancelReason::Deadline => CANCELLED | BY_DEADLINE,
        }
    }

    fn from_bits(bits: u8) -> Option<Self> {
        if bits & CANCELLED == 0 {
            None
        } else if bits & BY_DEADLINE != 0 {
            Some(CancelReason::Deadline)
        } else {
            Some(CancelReason::Requested)
        }
    }
}

pub(crate) struct Node {
    pub(crate) id: u64,
    /// The enclosing scope: for a plain child the node that cancels it, for a
    /// shielded child only a record (it is not attached there).
    parent: Option<Arc<Node>>,
    pub(crate) shielded: bool,
    /// `CANCELLED | BY_DEADLINE | ORIGIN` bits; see invariants 1 and 7.
    state: AtomicU8,
    /// The message of a cancel that started here (`ORIGIN`). Written at most
    /// once, under the lock, before `CANCELLED` is stored (invariant 1); read
    /// without a lock by whoever saw `ORIGIN`. (A std `OnceLock` also under
    /// loom: the models check the `state` store that publishes it.)
    message: OnceLock<CancelMessage>,
    /// Effective deadline in ticks (see `clock.rs`), `NO_DEADLINE` if none.
    deadline: AtomicI64,
    /// This node's own deadline in ticks; `deadline <= own_deadline` always.
    own_deadline: AtomicI64,
    /// Live `CancelScope` handles; see invariant 4.
    handles: AtomicUsize,
    inner: Mutex<Locked>,
}

/// The part of a [`Node`] under its mutex (`Node::inner`): read and written
/// only with that lock held ([`lock`]; the lock order is in the module doc,
/// under "Deadlock safety"). The atomics of `Node` are read without it; the
/// invariants say which of their writes take it.
struct Locked {
    children: Slab<Arc<Node>>,
    /// Key of this node in `parent.children` while attached.
    slot: Option<usize>,
    waiters: Slab<Waker>,
    detached: bool,
    /// A deadline timer task exists for this node (at most one: invariant 9).
    timer_running: bool,
    /// Waiters that armed this node's timer and have not disarmed it
    /// (invariant 9). Meaningless once cancelled or detached.
    armed: usize,
    /// A deadline was tightened here while waiters below it waited: the timer
    /// runs until fire, cancel or detach, whatever `armed` says (invariant 9).
    pinned: bool,
    /// Where that timer task parks; woken on cancel, detach, deadline change
    /// and the last disarm.
    timer_waker: Option<Waker>,
}

fn next_id() -> u64 {
    // std atomic on purpose, see `crate::sync`.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn node(
    parent: Option<Arc<Node>>,
    shielded: bool,
    state: u8,
    deadline: i64,
    slot: Option<usize>,
) -> Node {
    Node {
        id: next_id(),
        parent,
        shielded,
        // A born-cancelled child is not an origin (invariant 7).
        state: AtomicU8::new(state & !(ORIGIN | SUBTREE_DONE)),
        message: OnceLock::new(),
        deadline: AtomicI64::new(deadline),
        own_deadline: AtomicI64::new(NO_DEADLINE),
        handles: AtomicUsize::new(1),
        inner: Mutex::new(Locked {
            children: Slab::new(),
            slot,
            waiters: Slab::new(),
            detached: false,
            timer_running: false,
            armed: 0,
            pinned: false,
            timer_waker: None,
        }),
    }
}

/// A new root scope with one handle.
pub(crate) fn new_root() -> Arc<Node> {
    Arc::new(node(None, false, 0, NO_DEADLINE, None))
}

/// A child of `parent` with one handle, attached unless `parent` is already
/// cancelled (invariant 3).
pub(crate) fn new_child(parent: &Arc<Node>) -> Arc<Node> {
    let mut inner = lock(&parent.inner);
    let state = parent.state.load(Ordering::Relaxed); // under the lock: invariant 1
    if state & CANCELLED != 0 {
        return Arc::new(node(Some(parent.clone()), false, state, NO_DEADLINE, None));
    }
    let entry = inner.children.vacant_entry();
    let deadline = parent.deadline.load(Ordering::Relaxed); // under the lock: invariant 5
    let child = Arc::new(node(
        Some(parent.clone()),
        false,
        0,
        deadline,
        Some(entry.key()),
    ));
    entry.insert(child.clone());
    child
}

/// A shielded child: a root that remembers `parent` but is never cancelled by it.
pub(crate) fn new_shielded(parent: &Arc<Node>) -> Arc<Node> {
    Arc::new(node(Some(parent.clone()), true, 0, NO_DEADLINE, None))
}

pub(crate) fn parent_id(node: &Node) -> Option<u64> {
    node.parent.as_ref().map(|p| p.id)
}

// ===== state =====

/// Lock-free: one atomic load.
pub(crate) fn reason(node: &Node) -> Option<CancelReason> {
    // Acquire pairs with the Release store in `cancel`, so that whoever sees the
    // flag also sees everything the canceller did before cancelling.
    CancelReason::from_bits(node.state.load(Ordering::Acquire))
}

#[inline]
pub(crate) fn is_cancelled(node: &Node) -> bool {
    node.state.load(Ordering::Acquire) & CANCELLED != 0
}

/// Effective deadline in ticks (`NO_DEADLINE` if none). Lock-free.
pub(crate) fn deadline(node: &Node) -> i64 {
    node.deadline.load(Ordering::Acquire)
}

/// Cancels `node` and, transitively, every attached (that is, non-shielded)
/// descendant, each with `reason`, then wakes their waiters. O(descendants).
/// Returns whether this call did
/// it (`false` if the node was already cancelled: the first reason stays).
pub(crate) fn cancel(node: &Arc<Node>, reason: CancelReason) -> bool {
    cancel_with(node, reason, None)
}

/// As [`cancel`], with an optional message stored at `node`, the origin
/// (invariant 7). A message that loses (`node` already cancelled) is dropped
/// after every lock is released.
pub(crate) fn cancel_with(
    node: &Arc<Node>,
    reason: CancelReason,
    mut message: Option<CancelMessage>,
) -> bool {
    let mut did = false;
    let mut top = true;
    // Each node with the reason bits to give it if it is not cancelled yet:
    // those of the node the walk came from (invariant 7).
    let mut work = vec![(node.clone(), reason.bits())];
    let mut wake = Vec::new();
    while let Some((n, bits)) = work.pop() {
        let mut inner = lock(&n.inner);
        let state = n.state.load(Ordering::Relaxed);
        let here = if state & CANCELLED != 0 {
            // Already cancelled, the first reason stays. The call that set it
            // may still be walking the subtree: walk it too unless a walk
            // from here has finished (invariant 8).
            if state & SUBTREE_DONE != 0 {
                top = false;
                continue;
            }
            state & (CANCELLED | BY_DEADLINE)
        } else {
            if top {
                // Invariant 1: the message before the flag that publishes it.
                if let Some(m) = message.take() {
                    let set = n.message.set(m);
                    debug_assert!(set.is_ok(), "an uncancelled node has no message");
                }
                // Release pairs with the Acquire loads in `reason` /
                // `is_cancelled` / `message`.
                n.state.store(bits | ORIGIN, Ordering::Release);
                did = true;
            } else {
                n.state.store(bits, Ordering::Release);
            }
            // Invariant 2: drain in the same critical section.
            wake.extend(inner.waiters.drain());
            wake.extend(inner.timer_waker.take());
            bits
        };
        top = false;
        for (_, c) in inner.children.iter() {
            // A leaf (the usual fan-out: a scope per waiter) is marked here,
            // under its parent's lock, parent before child as the lock order
            // says: no reference to it is taken. A node with children of its
            // own is walked later (a new child of it is born cancelled if it
            // comes after the mark, invariant 3).
            let mut leaf = lock(&c.inner);
            if leaf.children.is_empty() {
                if c.state.load(Ordering::Relaxed) & CANCELLED == 0 {
                    c.state.store(here, Ordering::Release);
                    wake.extend(leaf.waiters.drain());
                    wake.extend(leaf.timer_waker.take());
                }
                continue;
            }
            drop(leaf);
            work.push((c.clone(), here));
        }
    }
    // Invariant 8. (An OR on a node already cancelled: no lock needed.)
    node.state.fetch_or(SUBTREE_DONE, Ordering::Release);
    // Wake only once the whole subtree is marked: whoever wakes first sees
    // every descendant cancelled already.
    for w in wake {
        w.wake();
    }
    // A losing message goes here, under no lock.
    drop(message);
    did
}

/// The message of the cancel that reached `node`, if it had one: read at the
/// origin (invariant 7). Lock-free: one Acquire load per node up to the origin.
pub(crate) fn message(node: &Node) -> Option<&CancelMessage> {
    let mut n = node;
    loop {
        // Acquire pairs with the Release store in `cancel_with`: seeing a
        // node's flag (set by the walk after its parent's, or inherited at
        // birth under the parent's lock) means seeing the parent's too, and
        // seeing `ORIGIN` means seeing the message stored before it.
        let state = n.state.load(Ordering::Acquire);
        if state & CANCELLED == 0 {
            return None;
        }
        if state & ORIGIN != 0 {
            return n.message.get();
        }
        debug_assert!(
            !n.shielded,
            "a shielded node is cancelled only as an origin"
        );
        if n.shielded {
            return None;
        }
        n = n.parent.as_deref()?;
    }
}

// ===== waiters =====

/// Registers `waker` (a clone made by the caller, before the lock) to be
/// woken when `node` is cancelled (or detached, see invariant 6), reusing
/// `slot` if this waiter registered before. Returns `Err(())` if the node is
/// already cancelled or detached (nothing registered), else the effective
/// deadline read under the lock (invariant 5). A slot key cannot go stale:
/// the slab is drained only by a cancel or a detach, which are final.
pub(crate) fn register(node: &Node, waker: Waker, slot: &mut Option<usize>) -> Result<i64, ()> {
    let mut after = AfterUnlock::new();
    let mut inner = lock(&node.inner);
    if node.state.load(Ordering::Relaxed) & CANCELLED != 0 || inner.detached {
        // Invariants 2 and 6: the slab was drained, our old key is meaningless.
        *slot = None;
        after.drop_waker(Some(waker));
        return Err(());
    }
    match slot {
        Some(key) => after.drop_waker(Some(std::mem::replace(&mut inner.waiters[*key], waker))),
        None => *slot = Some(inner.waiters.insert(waker)),
    }
    Ok(node.deadline.load(Ordering::Relaxed))
}

/// Removes a waiter registered with [`register`]; its waker is dropped after
/// the lock.
pub(crate) fn deregister(node: &Node, slot: &mut Option<usize>) {
    if let Some(key) = slot.take() {
        // Cancelled: the slab was drained when the flag was set (invariant
        // 2; Acquire in `is_cancelled` pairs with that store), so the key is
        // gone already and the lock is not needed (a fan-out's every waiter
        // takes this path).
        if is_cancelled(node) {
            return;
        }
        let mut after = AfterUnlock::new();
        let mut inner = lock(&node.inner);
        // After a cancel or a detach the slab was drained and the key is
        // reused by nobody (invariants 2 and 6).
        if node.state.load(Ordering::Relaxed) & CANCELLED == 0 && !inner.detached {
            after.drop_waker(inner.waiters.try_remove(key));
        }
    }
}

// ===== handles and detaching =====

pub(crate) fn add_handle(node: &Node) {
    // Relaxed as in `Arc::clone`: a new handle is made from an existing one,
    // which keeps the count above zero meanwhile.
    node.handles.fetch_add(1, Ordering::Relaxed);
}

/// Drops one handle; the last one detaches the node if it has no attached child.
pub(crate) fn drop_handle(node: &Arc<Node>) {
    // AcqRel: the thread that reaches zero must see every other handle's work
    // before it inspects the node in `detach`.
    if node.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
        detach(node);
    }
}

/// Detaches `node`, then each ancestor that this leaves unobservable.
fn detach(node: &Arc<Node>) {
    let mut current = node.clone();
    loop {
        // A shielded node is never attached, so it has no parent lock to take.
        let parent = current.parent.clone().filter(|_| !current.shielded);
        let mut parent_inner = parent.as_ref().map(|p| lock(&p.inner));
        let mut inner = lock(&current.inner);
        if inner.detached
            || !inner.children.is_empty()
            || current.handles.load(Ordering::Acquire) != 0
        {
            return;
        }
        inner.detached = true;
        // Invariant 6: only registrations without a handle can be left here.
        let mut wake: Vec<Waker> = inner.waiters.drain().collect();
        wake.extend(inner.timer_waker.take());
        let slot = inner.slot.take();
        drop(inner);
        let mut next = None;
        if let (Some(key), Some(p), Some(pi)) = (slot, &parent, parent_inner.as_mut()) {
            // Not the last reference: `current` is held above, so no `Drop` of
            // a node runs under these locks.
            drop(pi.children.remove(key));
            if pi.children.is_empty() && !pi.detached && p.handles.load(Ordering::Acquire) == 0 {
                next = Some(p.clone());
            }
        }
        drop(parent_inner);
        for w in wake {
            w.wake();
        }
        match next {
            Some(p) => current = p,
            None => return,
        }
    }
}

// ===== deadlines =====

/// Tightens `node`'s own deadline to `at` ticks (earliest wins) and propagates it
/// to attached descendants (invariant 5). Returns `true` when a timer should be
/// started for `node` now: someone in the subtree waits and no timer runs yet.
/// Such waiters may have armed an ancestor's timer (the deadline they saw),
/// so `node`'s timer is pinned (invariant 9): it lives until fire, cancel or
/// detach.
pub(crate) fn tighten_deadline(node: &Arc<Node>, at: i64) -> bool {
    let mut waited = false;
    {
        let mut after = AfterUnlock::new();
        let mut inner = lock(&node.inner);
        if at >= node.own_deadline.load(Ordering::Relaxed) || is_cancelled(node) {
            return false;
        }
        node.own_deadline.store(at, Ordering::Release);
        // A running timer re-reads the (earlier) deadline, once woken after
        // the lock; it keeps the lifetime it had (its waiters armed it here).
        after.wake_all(inner.timer_waker.take());
    }
    let mut work = vec![node.clone()];
    while let Some(n) = work.pop() {
        let inner = lock(&n.inner);
        if at < n.deadline.load(Ordering::Relaxed) {
            n.deadline.store(at, Ordering::Release);
            waited |= !inner.waiters.is_empty();
            work.extend(inner.children.iter().map(|(_, c)| c.clone()));
        }
    }
    waited && pin_timer(node)
}

/// The node whose own deadline is `node`'s effective one, if any.
pub(crate) fn deadline_origin(node: &Arc<Node>) -> Option<Arc<Node>> {
    let eff = node.deadline.load(Ordering::Acquire);
    if eff == NO_DEADLINE {
        return None;
    }
    let mut n = node.clone();
    loop {
        if n.own_deadline.load(Ordering::Acquire) <= eff {
            return Some(n);
        }
        // Effective deadlines only come from non-shielded ancestors.
        n = match (&n.parent, n.shielded) {
            (Some(p), false) => p.clone(),
            _ => return Some(n),
        };
    }
}

/// A waiter arms `origin`'s deadline timer (the node its effective deadline
/// comes from, [`deadline_origin`]): counted until its [`disarm_timer`].
/// Returns `true` when the caller must start the timer task: none runs (at
/// most one `true` until that task's `Stop`, invariant 9).
pub(crate) fn arm_timer(origin: &Node) -> bool {
    let mut inner = lock(&origin.inner);
    inner.armed = inner.armed.saturating_add(1);
    if inner.timer_running || inner.detached || is_cancelled(origin) {
        return false;
    }
    inner.timer_running = true;
    true
}

/// Undoes one [`arm_timer`] on `origin`. The last one (of an unpinned node)
/// wakes the timer, which then stops (invariant 9).
pub(crate) fn disarm_timer(origin: &Node) {
    // Cancelled: the timer stops anyway and the count means nothing any more
    // (the lock is not needed; a cancelled fan-out's every waiter comes here).
    if is_cancelled(origin) {
        return;
    }
    let mut after = AfterUnlock::new();
    let mut inner = lock(&origin.inner);
    debug_assert!(inner.armed > 0, "a disarm without its arm");
    inner.armed = inner.armed.saturating_sub(1);
    if inner.armed == 0 && !inner.pinned {
        after.wake_all(inner.timer_waker.take());
    }
}

/// Pins `node`'s timer to the older lifetime, until fire, cancel or detach
/// (invariant 9). Returns `true` when the caller must start the timer task.
pub(crate) fn pin_timer(node: &Node) -> bool {
    let mut inner = lock(&node.inner);
    if inner.detached || is_cancelled(node) {
        return false;
    }
    inner.pinned = true;
    if inner.timer_running {
        return false;
    }
    inner.timer_running = true;
    true
}

/// The timer task for `node` could not be started (no runtime): gives the
/// claim of [`arm_timer`] / [`pin_timer`] back, so a later waiter can start one.
pub(crate) fn timer_not_started(node: &Node) {
    lock(&node.inner).timer_running = false;
}

/// What a deadline timer does next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TimerStep {
    /// The node is cancelled or detached, or no waiter needs the timer any
    /// more (invariant 9): the timer ends.
    Stop,
    /// Sleep until this deadline (ticks); the waker is stored.
    SleepUntil(i64),
}

/// Called by the timer task on every poll, with its waker.
pub(crate) fn timer_poll(node: &Node, waker: &Waker) -> TimerStep {
    let fresh = waker.clone();
    let mut after = AfterUnlock::new();
    let mut inner = lock(&node.inner);
    // Invariant 9: read under the lock that `arm_timer` counts under.
    let unneeded = inner.armed == 0 && !inner.pinned;
    if inner.detached || is_cancelled(node) || unneeded {
        inner.timer_running = false;
        after.drop_waker(inner.timer_waker.take());
        after.drop_waker(Some(fresh));
        return TimerStep::Stop;
    }
    after.drop_waker(inner.timer_waker.replace(fresh));
    TimerStep::SleepUntil(node.own_deadline.load(Ordering::Relaxed))
}

// ===== for unit tests =====

#[cfg(test)]
pub(crate) fn is_detached(node: &Node) -> bool {
    lock(&node.inner).detached
}

#[cfg(test)]
pub(crate) fn child_count(node: &Node) -> usize {
    lock(&node.inner).children.len()
}

#[cfg(test)]
pub(crate) fn waiter_count(node: &Node) -> usize {
    lock(&node.inner).waiters.len()
}

#[cfg(test)]
pub(crate) fn timer_running(node: &Node) -> bool {
    lock(&node.inner).timer_running
}

#[cfg(test)]
pub(crate) fn armed_count(node: &Node) -> usize {
    lock(&node.inner).armed
}

impl Drop for Node {
    fn drop(&mut self) {
        // Unwind a long parent chain iteratively: dropping the last leaf of a
        // deep tree would otherwise recurse once per level and could overflow
        // the stack.
        let mut parent = self.parent.take();
        while let Some(p) = parent {
            match Arc::try_unwrap(p) {
                Ok(mut n) => parent = n.parent.take(),
                Err(_) => break,
            }
        }
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.load(Ordering::Acquire);
        let deadline = self.deadline.load(Ordering::Acquire);
        f.debug_struct("Node")
            .field("id", &self.id)
            .field("parent", &parent_id(self))
            .field("shielded", &self.shielded)
            .field("cancelled", &CancelReason::from_bits(state))
            .field("origin", &(state & ORIGIN != 0))
            .field("message", &self.message.get())
            .field(
                "deadline_ticks",
                &(deadline != NO_DEADLINE).then_some(deadline),
            )
            .field("handles", &self.handles.load(Ordering::Relaxed))
            .finish()
    }
}
