//! Fake upstreams of the supported platforms, for tests, benchmarks, the demo and
//! `chatvault sim` ([`cli`]).

pub mod cli;
pub mod faults;
pub mod png;
pub mod serve;
pub mod tangsengdaodao;
pub mod text;
pub mod yunhu;
pub mod yunxin;

use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;

/// A fake world that can produce random activity (posts, edits, recalls, reactions).
pub trait LiveWorld: Send + 'static {
    /// Make up to `n` random changes; returns how many were made.
    fn act(&mut self, rng: &mut StdRng, n: usize) -> usize;
}

impl LiveWorld for tangsengdaodao::World {
    fn act(&mut self, rng: &mut StdRng, n: usize) -> usize {
        self.random_activity(rng, n).len()
    }
}

impl LiveWorld for yunxin::World {
    fn act(&mut self, rng: &mut StdRng, n: usize) -> usize {
        self.random_activity(rng, n).len()
    }
}

impl LiveWorld for yunhu::World {
    fn act(&mut self, rng: &mut StdRng, n: usize) -> usize {
        self.random_activity(rng, n).len()
    }
}

/// A closure that makes `n` changes to a served world each time it is called.
pub fn activity<W: LiveWorld>(
    world: Arc<Mutex<W>>,
    n: usize,
) -> impl FnMut(&mut StdRng) -> usize + Send + 'static {
    move |rng| serve::lock(&world).act(rng, n)
}
