//! Counters that every thread bumps on every transition, without making the
//! threads fight over one cache line.
//!
//! Each thread adds into its own stripe (threads are spread over a fixed
//! number of stripes); a reader sums the stripes. A sum taken while others
//! add is a moment's approximation, which is all a gauge needs; nothing
//! depends on two counters being read at one instant.

use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

/// Stripes: enough to give each core of a common machine its own.
const STRIPES: usize = 16;

/// `N` counters, striped.
pub(crate) struct Tally<const N: usize> {
    stripes: [Stripe<N>; STRIPES],
}

/// One thread group's counters, on cache lines of their own.
#[repr(align(128))]
struct Stripe<const N: usize>([AtomicI64; N]);

impl<const N: usize> Default for Tally<N> {
    fn default() -> Self {
        Tally {
            stripes: std::array::from_fn(|_| Stripe(std::array::from_fn(|_| AtomicI64::new(0)))),
        }
    }
}

impl<const N: usize> Tally<N> {
    /// Adds `delta` to counter `slot`.
    pub(crate) fn add(&self, slot: usize, delta: i64) {
        self.local().add(slot, delta);
    }

    /// The calling thread's stripe, for several adds with one look-up.
    pub(crate) fn local(&self) -> Local<'_, N> {
        Local(&self.stripes[stripe()])
    }

    /// Counter `slot`, summed over the stripes.
    pub(crate) fn get(&self, slot: usize) -> i64 {
        self.stripes
            .iter()
            .map(|stripe| stripe.0[slot].load(Ordering::Relaxed))
            .sum()
    }
}

/// One thread's stripe of a [`Tally`].
pub(crate) struct Local<'a, const N: usize>(&'a Stripe<N>);

impl<const N: usize> Local<'_, N> {
    /// Adds `delta` to counter `slot`.
    pub(crate) fn add(&self, slot: usize, delta: i64) {
        self.0.0[slot].fetch_add(delta, Ordering::Relaxed);
    }
}

/// The calling thread's stripe, assigned round-robin on first use.
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: Cell<Option<usize>> = const { Cell::new(None) };
    }
    STRIPE.with(|slot| match slot.get() {
        Some(stripe) => stripe,
        None => {
            let stripe = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
            slot.set(Some(stripe));
            stripe
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_what_every_thread_added() {
        let tally = std::sync::Arc::new(Tally::<2>::default());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let tally = tally.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        tally.add(0, 1);
                        tally.add(1, -1);
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!((tally.get(0), tally.get(1)), (8000, -8000));
    }
}
