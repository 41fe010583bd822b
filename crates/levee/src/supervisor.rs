//! The `levee-slo` thread: what the gateway watches about itself once a second.
//!
//! It follows config reloads, evaluates every SLO, sends burn-rate alerts, rolls back canaries
//! whose SLO burns too fast, guards running chaos experiments, and saves counts. It sits above
//! the SLO engine, chaos experiments and the gateway's state it reads, so that none of them
//! needs to know the others: the SLO engine only counts and judges.

use std::sync::Arc;
use std::time::Duration;

use crate::chaos::experiments::Experiments;
use crate::gateway::Gateway;
use crate::slo::{canary, notify, SloEngine};

/// The `levee-slo` thread's loop: follows config reloads, evaluates every second, sends
/// alerts every `alerting.evaluation_interval`, saves counts, and steps experiments. Ends
/// (after a last save) when `stop` turns true.
pub async fn run(
    engine: Arc<SloEngine>,
    experiments: Arc<Experiments>,
    mut gateway_rx: tokio::sync::watch::Receiver<Arc<Gateway>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    external_url: String,
) {
    let mut outbox: Option<notify::Outbox> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut next_alerts = tokio::time::Instant::now();
    let mut next_resend = tokio::time::Instant::now() + notify::RESEND_EVERY;
    // Canaries rolled back whose alert fires (it resolves when their config goes).
    let mut rolled_back: Vec<Arc<canary::Canary>> = Vec::new();
    loop {
        let gateway = gateway_rx.borrow_and_update().clone();
        let canaries: Vec<Arc<canary::Canary>> = gateway.canaries.iter().flatten().cloned().collect();
        let mut resolved = engine.apply(&gateway.config.slos);
        let now_ms = engine.clock.now_ms();
        rolled_back.retain(|old| {
            let kept = canaries.iter().any(|c| Arc::ptr_eq(c, old));
            if !kept {
                resolved.extend(old.notification(Some(now_ms)));
            }
            kept
        });
        track_rollbacks(&canaries, &mut rolled_back);
        if let Some(outbox) = &outbox {
            outbox.notify(&resolved, engine.clock.now_ms());
        }
        if outbox
            .as_ref()
            .is_none_or(|o| *o.spec() != gateway.config.alerting)
        {
            // The old receivers finish what they hold in the background.
            if let Some(old) = outbox.take() {
                tokio::spawn(old.drain(DRAIN_LIMIT));
            }
            outbox = Some(notify::Outbox::start(
                &gateway.config.alerting,
                external_url.clone(),
                engine.clone(),
            ));
        }
        let interval = gateway.config.alerting.evaluation_interval;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                changed = gateway_rx.changed() => match changed {
                    Ok(()) => break,
                    Err(_) => return finish(&engine, &experiments, outbox).await,
                },
                _ = stop.wait_for(|s| *s) => return finish(&engine, &experiments, outbox).await,
            }
            engine.evaluate();
            experiments.step(&engine);
            let rollbacks = canary::step(&engine, &canaries);
            if !rollbacks.is_empty() {
                track_rollbacks(&canaries, &mut rolled_back);
                if let Some(outbox) = &outbox {
                    outbox.notify(&rollbacks, engine.clock.now_ms());
                }
            }
            let now = tokio::time::Instant::now();
            if now >= next_alerts {
                next_alerts = now + interval;
                let transitions = engine.step_alerts();
                for t in &transitions {
                    tracing::warn!(slo = %t.slo, severity = t.severity.name(), firing = t.firing, "SLO burn-rate alert");
                }
                if let Some(outbox) = &outbox {
                    outbox.notify(&transitions, engine.clock.now_ms());
                }
            }
            if now >= next_resend {
                next_resend = now + notify::RESEND_EVERY;
                if let Some(outbox) = &outbox {
                    let mut firing = engine.firing();
                    firing.extend(rolled_back.iter().filter_map(|c| c.notification(None)));
                    outbox.resend(&firing, engine.clock.now_ms());
                }
            }
            engine.save();
        }
    }
}

/// Adds the canaries of `canaries` that are rolled back to `rolled_back`.
fn track_rollbacks(canaries: &[Arc<canary::Canary>], rolled_back: &mut Vec<Arc<canary::Canary>>) {
    for canary in canaries {
        if canary.rolled_back().is_some() && !rolled_back.iter().any(|c| Arc::ptr_eq(c, canary)) {
            rolled_back.push(canary.clone());
        }
    }
}

/// How long notifications still queued may take when the gateway stops or the receivers
/// change.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

async fn finish(engine: &SloEngine, experiments: &Experiments, outbox: Option<notify::Outbox>) {
    experiments.stop_all("the gateway stopped during the experiment", engine);
    engine.save();
    if let Some(outbox) = outbox {
        outbox.drain(DRAIN_LIMIT).await;
    }
}
