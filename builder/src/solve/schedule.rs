//! The scheduler: every node of a build graph runs once its inputs are
//! done, several at a time, each result handed down to the nodes that
//! need it; the first failure cancels the rest.

use super::*;

/// How many steps run at once: `RBUILD_MAX_PARALLELISM`, else four per
/// CPU. More ready steps than CPUs is the point: three CPU-bound stages on
/// two cores take 3.3 s run together against 4.5 s two at a time (bench
/// parallel-stages); BuildKit sets no limit at all.
pub(super) fn max_parallelism() -> usize {
    std::env::var("RBUILD_MAX_PARALLELISM")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| 4 * std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Where a [`schedule`] is: the nodes done, the first failure, how many
/// inputs each node still waits for, and the nodes ready to run (by
/// topological position).
struct Progressed {
    done: BTreeMap<NodeIndex, Arc<Done>>,
    failure: Option<anyhow::Error>,
    waiting: BTreeMap<NodeIndex, usize>,
    ready: std::collections::BTreeSet<(usize, NodeIndex)>,
    /// How many dependents of a done node have not started yet: at 0 its
    /// result leaves `done` (its dependents hold it), so that a chain of
    /// steps hands one state down instead of keeping a copy per step.
    unstarted: BTreeMap<NodeIndex, usize>,
}

impl Progressed {
    /// Takes `node`'s result: its dependents that waited only for it
    /// become ready; a failure cancels the running nodes.
    fn finish(
        &mut self,
        node: NodeIndex,
        result: anyhow::Result<Done>,
        dependents: &BTreeMap<NodeIndex, Vec<NodeIndex>>,
        position: &BTreeMap<NodeIndex, usize>,
        cancel: &Cancel,
    ) {
        match result {
            Ok(d) => {
                self.done.insert(node, Arc::new(d));
                for &next in dependents.get(&node).map(Vec::as_slice).unwrap_or(&[]) {
                    let w = self.waiting.get_mut(&next).expect("every node is counted");
                    *w -= 1;
                    if *w == 0 {
                        self.ready.insert((position[&next], next));
                    }
                }
            }
            Err(e) => {
                cancel.cancel();
                self.failure.get_or_insert(e);
            }
        }
    }
}

/// Runs every node of `graph` once its inputs are done, up to `limit` at a
/// time, each on a thread of its own (or on this one when it is the only
/// node that can run); `run` gets the node and its inputs' results. On the first failure no new node starts, `cancel` stops the
/// running ones, and the first error is returned.
pub(super) fn schedule<F>(
    graph: &BuildGraph,
    limit: usize,
    cancel: &Cancel,
    run: F,
) -> anyhow::Result<BTreeMap<NodeIndex, Arc<Done>>>
where
    F: Fn(NodeIndex, BTreeMap<NodeIndex, Arc<Done>>) -> anyhow::Result<Done> + Sync,
{
    use std::collections::BTreeSet;
    let order = graph.topological();
    let position: BTreeMap<NodeIndex, usize> =
        order.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let mut waiting: BTreeMap<NodeIndex, usize> = BTreeMap::new();
    let mut dependents: BTreeMap<NodeIndex, Vec<NodeIndex>> = BTreeMap::new();
    // Ready nodes by topological position: a sequential run keeps its order.
    let mut ready: BTreeSet<(usize, NodeIndex)> = BTreeSet::new();
    for &node in &order {
        let inputs: BTreeSet<NodeIndex> = graph.inputs(node).into_iter().map(|(n, _)| n).collect();
        for &i in &inputs {
            dependents.entry(i).or_default().push(node);
        }
        waiting.insert(node, inputs.len());
        if inputs.is_empty() {
            ready.insert((position[&node], node));
        }
    }
    let unstarted = dependents.iter().map(|(n, d)| (*n, d.len())).collect();
    let mut state = Progressed {
        done: BTreeMap::new(),
        failure: None,
        waiting,
        ready,
        unstarted,
    };
    let run_caught = |node: NodeIndex, inputs: BTreeMap<NodeIndex, Arc<Done>>| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(node, inputs)))
            .unwrap_or_else(|_| Err(anyhow!("internal error: a build step panicked")))
    };
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::channel::<(NodeIndex, anyhow::Result<Done>)>();
        let mut running = 0usize;
        loop {
            while state.failure.is_none() && running < limit {
                let Some((_, node)) = state.ready.pop_first() else {
                    break;
                };
                let inputs = take_inputs(&mut state, graph, node, graph.target);
                if running == 0 && state.ready.is_empty() {
                    // Everything left waits for this node: it runs here,
                    // without a thread start (on a VM, the wake-up of an
                    // idle CPU for it took up to 2 ms).
                    let result = run_caught(node, inputs);
                    state.finish(node, result, &dependents, &position, cancel);
                    continue;
                }
                let tx = tx.clone();
                let run_caught = &run_caught;
                running += 1;
                scope.spawn(move || {
                    let _ = tx.send((node, run_caught(node, inputs)));
                });
            }
            if running == 0 {
                break;
            }
            let (node, result) = rx.recv().expect("a running step reports back");
            running -= 1;
            state.finish(node, result, &dependents, &position, cancel);
        }
    });
    let Progressed { done, failure, .. } = state;
    match failure {
        Some(e) => Err(e),
        None => Ok(done),
    }
}

/// Inputs a node takes from `state` as it starts; an input whose last
/// dependent this is leaves `state.done` (unless it is `keep`).
fn take_inputs(
    state: &mut Progressed,
    graph: &BuildGraph,
    node: NodeIndex,
    keep: NodeIndex,
) -> BTreeMap<NodeIndex, Arc<Done>> {
    let mut inputs = BTreeMap::new();
    for (n, _) in graph.inputs(node) {
        if inputs.contains_key(&n) {
            continue;
        }
        let Some(d) = state.done.get(&n) else {
            continue;
        };
        inputs.insert(n, d.clone());
        let left = state.unstarted.get_mut(&n).expect("every input is counted");
        *left -= 1;
        if *left == 0 && n != keep {
            state.done.remove(&n);
        }
    }
    inputs
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    /// The graph of a Dockerfile (no base images).
    fn graph(dockerfile: &str) -> BuildGraph {
        let df = frontend::parse("Dockerfile", dockerfile).unwrap();
        let plan = frontend::stage::plan(&df, &frontend::stage::PlanOptions::default()).unwrap();
        frontend::graph::compile(&plan, &frontend::graph::NoImages).unwrap()
    }

    fn empty() -> Done {
        Done {
            snapshot: Snap::default(),
            image: ImageState::new(None, None),
            layers: Vec::new(),
            key: None,
        }
    }

    const TWO_STAGES: &str = "FROM scratch AS a\nENV A=1\nENV A2=1\n\
        FROM scratch AS b\nENV B=1\nENV B2=1\n\
        FROM scratch\nCOPY --from=a /x /x\nCOPY --from=b /y /y\n";

    #[test]
    fn every_node_runs_once_after_its_inputs() {
        let g = graph(TWO_STAGES);
        let ran = Mutex::new(Vec::new());
        let done = schedule(&g, 4, &Cancel::default(), |node, inputs| {
            for (input, _) in g.inputs(node) {
                assert!(
                    inputs.contains_key(&input),
                    "{node:?} started before {input:?}"
                );
            }
            ran.lock().unwrap().push(node);
            Ok(empty())
        })
        .unwrap();
        let mut ran = ran.into_inner().unwrap();
        let all = ran.len();
        ran.sort();
        ran.dedup();
        assert_eq!(ran.len(), all, "a node ran twice");
        assert_eq!(all, g.graph.node_count());
        // What is left: the target (and no intermediate state).
        assert!(done.contains_key(&g.target));
        assert_eq!(
            done.len(),
            1,
            "{done:?}",
            done = done.keys().collect::<Vec<_>>()
        );
    }

    /// A step of a chain takes its parent's state over: nobody else holds it.
    #[test]
    fn a_chain_hands_its_state_down() {
        let g = graph("FROM scratch\nENV A=1\nENV B=2\nENV C=3\n");
        let shared = AtomicUsize::new(0);
        schedule(&g, 4, &Cancel::default(), |_, inputs| {
            if inputs.values().any(|d| Arc::strong_count(d) > 1) {
                shared.fetch_add(1, Ordering::SeqCst);
            }
            Ok(empty())
        })
        .unwrap();
        assert_eq!(shared.into_inner(), 0);
    }

    /// Independent stages run together up to the limit; with a limit of
    /// one, never two at once.
    #[test]
    fn independent_nodes_run_together_up_to_the_limit() {
        let g = graph(TWO_STAGES);
        for (limit, want_together) in [(4, true), (1, false)] {
            let running = AtomicUsize::new(0);
            let most = AtomicUsize::new(0);
            schedule(&g, limit, &Cancel::default(), |_, _| {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(30));
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(empty())
            })
            .unwrap();
            let most = most.into_inner();
            assert_eq!(most > 1, want_together, "limit {limit}: {most} at once");
            assert!(most <= limit, "limit {limit}: {most} at once");
        }
    }

    /// The first failure is the result, cancels what runs, and starts
    /// nothing after it.
    #[test]
    fn a_failure_cancels_the_rest() {
        let g = graph("FROM scratch\nENV A=1\nENV B=2\nENV C=3\nENV D=4\n");
        let order = g.topological();
        let failing = order[2];
        let cancel = Cancel::default();
        let started = Mutex::new(Vec::new());
        let err = schedule(&g, 4, &cancel, |node, _| {
            started.lock().unwrap().push(node);
            if node == failing {
                anyhow::bail!("step failed");
            }
            Ok(empty())
        })
        .err()
        .expect("the build fails");
        assert_eq!(err.to_string(), "step failed");
        assert!(cancel.is_cancelled());
        let started = started.into_inner().unwrap();
        assert_eq!(started, order[..3].to_vec(), "nothing after the failure");
    }

    /// A step that panics fails the build instead of taking rbuild down.
    #[test]
    fn a_panic_is_an_error() {
        let g = graph("FROM scratch\nENV A=1\n");
        let err = schedule(&g, 4, &Cancel::default(), |_, _| -> anyhow::Result<Done> {
            panic!("boom")
        })
        .err()
        .expect("the build fails");
        assert!(err.to_string().contains("panicked"), "{err}");
    }
}
