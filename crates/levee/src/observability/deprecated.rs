//! The label set of `levee_deprecated_requests_total{route,consumer}`, bounded: each route
//! names at most [`MAX_CONSUMERS_PER_ROUTE`] consumers, the first to call it, and counts
//! every later one under `consumer="_other"`. The admitted set is the process's, shared by
//! every worker, so a consumer has the same label whichever worker counts it; a worker asks
//! it only for a consumer its own shard has not counted yet.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// Consumers named per deprecated route at most; later ones are counted as [`OTHER`].
pub const MAX_CONSUMERS_PER_ROUTE: usize = 1_000;

/// The consumer label of calls past the cap.
pub const OTHER: &str = "_other";

/// The consumers each deprecated route names in its metric.
#[derive(Debug)]
pub struct ConsumerCap {
    admitted: Mutex<HashMap<Arc<str>, HashSet<Arc<str>>>>,
    other: Arc<str>,
    anonymous: Arc<str>,
}

impl Default for ConsumerCap {
    fn default() -> ConsumerCap {
        ConsumerCap {
            admitted: Mutex::default(),
            other: Arc::from(OTHER),
            anonymous: Arc::from(""),
        }
    }
}

impl ConsumerCap {
    /// The label `consumer` is counted under on `route`: its own name while the route names
    /// fewer than [`MAX_CONSUMERS_PER_ROUTE`] (or already names it), else [`OTHER`].
    pub fn label(&self, route: &Arc<str>, consumer: &Arc<str>) -> Arc<str> {
        let mut admitted = self.admitted.lock().unwrap_or_else(|p| p.into_inner());
        let named = match admitted.get_mut(&**route) {
            Some(named) => named,
            None => admitted.entry(route.clone()).or_default(),
        };
        if named.contains(&**consumer) {
            return consumer.clone();
        }
        if named.len() < MAX_CONSUMERS_PER_ROUTE {
            named.insert(consumer.clone());
            return consumer.clone();
        }
        self.other.clone()
    }

    /// The label of a call without a consumer (a route without auth): the empty string.
    pub fn anonymous(&self) -> &Arc<str> {
        &self.anonymous
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_cap_consumers_are_counted_as_other_and_the_first_keep_their_names() {
        let cap = ConsumerCap::default();
        let route: Arc<str> = "users-v1".into();
        for i in 0..MAX_CONSUMERS_PER_ROUTE {
            let consumer: Arc<str> = format!("c{i}").into();
            assert_eq!(cap.label(&route, &consumer), consumer);
        }
        let late: Arc<str> = "late".into();
        assert_eq!(&*cap.label(&route, &late), OTHER);
        let first: Arc<str> = "c0".into();
        assert_eq!(
            cap.label(&route, &first),
            first,
            "an admitted consumer keeps its label"
        );
        let other_route: Arc<str> = "orders-v1".into();
        assert_eq!(cap.label(&other_route, &late), late, "the cap is per route");
    }
}
