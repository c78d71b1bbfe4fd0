//! Isolation anomalies in the list-append history, in the manner of Elle (Kingsbury and Alvaro,
//! "Elle: inferring isolation anomalies from experimental observations", VLDB 2020).
//!
//! Each list-append transaction appends its own element (`client.seq`) to some keys and reads
//! others; each key's value on the final primary fixes the order of its versions. From it:
//! `ww` (one append after another), `wr` (a read saw the append that ended its prefix), `rw`
//! (a read missed the next append), and `so` (a session's later operation after one of its
//! writes: read-your-writes). A cycle of `ww` alone is G0, of `ww`/`wr`/`so` G1c, with exactly
//! one `rw` G-single. A read that is not a prefix of the final value saw a history the final
//! primary does not have (`incompatible-order`).

use std::collections::HashMap;

use super::history::{Kind, Op, Outcome};

/// Reports at most this many anomalies of one kind (a broken run would otherwise print
/// thousands of cycles).
const MOST: usize = 5;

/// FNV-1a of a list's text (`e1,e2,...`): a read is kept as its length and this hash.
pub fn hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// The element a transaction appends.
pub fn element(client: u32, seq: u32) -> String {
    format!("{client}.{seq}")
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dep {
    Ww,
    Wr,
    Rw,
    So,
}

/// Every isolation anomaly of the list-append operations of `ops` against the final values
/// `lists` (key -> elements, in order), as `(invariant, detail)`.
pub fn check(ops: &[Op], lists: &HashMap<u32, Vec<String>>) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let name =
        |i: usize| format!("client {} seq {} ({:?}, {} ms)", ops[i].client, ops[i].seq, ops[i].kind, ops[i].invoked_ms);
    let by_element: HashMap<String, usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, o)| o.kind == Kind::Append)
        .map(|(i, o)| (element(o.client, o.seq), i))
        .collect();
    // Which transactions committed: every acknowledged one, and any whose element is on the
    // final primary. A failed one there, or an acknowledged one missing, breaks atomicity.
    let mut committed = vec![false; ops.len()];
    for (i, o) in ops.iter().enumerate().filter(|(_, o)| o.kind == Kind::Append) {
        committed[i] = o.outcome == Outcome::Ok;
        for m in o.mops.iter().filter(|m| m.append) {
            let found = lists.get(&m.key).is_some_and(|l| l.contains(&element(o.client, o.seq)));
            match (o.outcome, found) {
                (Outcome::Ok, false) => {
                    out.push(("acknowledged", format!("{}: append to key {} acknowledged, missing", name(i), m.key)))
                }
                (Outcome::Failed, true) => {
                    out.push(("atomic", format!("{}: failed, yet its append to key {} is committed", name(i), m.key)))
                }
                (Outcome::Unknown, true) => committed[i] = true,
                _ => {}
            }
        }
    }
    let mut edges: Vec<Vec<(usize, Dep)>> = vec![Vec::new(); ops.len()];
    let mut add = |from: usize, to: usize, dep: Dep| {
        if from != to {
            edges[from].push((to, dep));
        }
    };
    for list in lists.values() {
        let writers: Vec<Option<usize>> = list.iter().map(|e| by_element.get(e).copied()).collect();
        for pair in writers.windows(2) {
            if let [Some(a), Some(b)] = pair {
                add(*a, *b, Dep::Ww);
            }
        }
    }
    let mut orders = 0;
    for (i, o) in ops.iter().enumerate() {
        if !matches!(o.kind, Kind::Append | Kind::ReadKeys) || o.outcome != Outcome::Ok {
            continue;
        }
        for m in o.mops.iter().filter(|m| !m.append) {
            let list = lists.get(&m.key).map(Vec::as_slice).unwrap_or_default();
            let len = usize::try_from(m.len).unwrap_or(usize::MAX);
            if len > list.len() || hash(&list[..len].join(",")) != m.hash {
                if orders < MOST {
                    out.push((
                        "incompatible-order",
                        format!(
                            "{}: read {} elements of key {} the final primary does not have in that order",
                            name(i),
                            m.len,
                            m.key
                        ),
                    ));
                }
                orders += 1;
                continue;
            }
            if let Some(w) = len.checked_sub(1).and_then(|n| by_element.get(&list[n])) {
                add(*w, i, Dep::Wr);
            }
            if let Some(w) = list.get(len).and_then(|e| by_element.get(e)) {
                add(i, *w, Dep::Rw);
            }
        }
    }
    // Session order: from each writing transaction to every later operation of its session
    // (through the session's next writer).
    let mut last_writer: HashMap<(u32, u32), usize> = HashMap::new();
    for (i, o) in ops.iter().enumerate() {
        let node = match o.kind {
            Kind::Append => committed[i],
            Kind::ReadKeys => o.outcome == Outcome::Ok,
            _ => false,
        };
        if !node {
            continue;
        }
        if let Some(&w) = last_writer.get(&(o.client, o.session)) {
            add(w, i, Dep::So);
        }
        if o.kind == Kind::Append {
            last_writer.insert((o.client, o.session), i);
        }
    }
    cycles(&edges, &name, &mut out);
    out
}

/// Finds G0, G1c and G-single cycles (each within one strongly connected component).
fn cycles(edges: &[Vec<(usize, Dep)>], name: &dyn Fn(usize) -> String, out: &mut Vec<(&'static str, String)>) {
    let component = scc(edges);
    let mut found: HashMap<&'static str, usize> = HashMap::new();
    let mut report = |kind: &'static str, path: Vec<usize>, out: &mut Vec<(&'static str, String)>| {
        let n = found.entry(kind).or_insert(0);
        *n += 1;
        if *n <= MOST {
            let names: Vec<String> = path.into_iter().map(name).collect();
            out.push((kind, format!("cycle: {}", names.join(" -> "))));
        }
    };
    for (from, list) in edges.iter().enumerate() {
        for &(to, dep) in list {
            if component[from] != component[to] {
                continue;
            }
            // A cycle through this edge back to `from`, over the edges each anomaly allows.
            let tries: &[(&'static str, &[Dep])] = match dep {
                Dep::Ww => &[("G0", &[Dep::Ww]), ("G1c", &[Dep::Ww, Dep::Wr, Dep::So])],
                Dep::Wr | Dep::So => &[("G1c", &[Dep::Ww, Dep::Wr, Dep::So])],
                Dep::Rw => &[("G-single", &[Dep::Ww, Dep::Wr, Dep::So])],
            };
            if let Some((kind, mut path)) = tries.iter().find_map(|(k, a)| reach(edges, to, from, a).map(|p| (*k, p))) {
                path.insert(0, from);
                report(kind, path, out);
            }
        }
    }
}

/// A path from `start` to `goal` over `allowed` edges (breadth first), as the nodes after `start`.
fn reach(edges: &[Vec<(usize, Dep)>], start: usize, goal: usize, allowed: &[Dep]) -> Option<Vec<usize>> {
    let mut before: HashMap<usize, usize> = HashMap::from([(start, start)]);
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(n) = queue.pop_front() {
        if n == goal {
            let mut path = vec![n];
            let mut at = n;
            while at != start {
                at = before[&at];
                path.push(at);
            }
            path.reverse();
            return Some(path);
        }
        for &(t, d) in &edges[n] {
            if allowed.contains(&d) && !before.contains_key(&t) {
                before.insert(t, n);
                queue.push_back(t);
            }
        }
    }
    None
}

/// Strongly connected components (Tarjan, iterative): each node's component number.
fn scc(edges: &[Vec<(usize, Dep)>]) -> Vec<usize> {
    let n = edges.len();
    let (mut index, mut low, mut on_stack) = (vec![usize::MAX; n], vec![0; n], vec![false; n]);
    let (mut component, mut stack, mut next, mut count) = (vec![usize::MAX; n], Vec::new(), 0, 0);
    for root in 0..n {
        if index[root] != usize::MAX {
            continue;
        }
        let mut work = vec![(root, 0usize)];
        while let Some(&mut (v, ref mut child)) = work.last_mut() {
            if *child == 0 {
                index[v] = next;
                low[v] = next;
                next += 1;
                stack.push(v);
                on_stack[v] = true;
            }
            if let Some(&(w, _)) = edges[v].get(*child) {
                *child += 1;
                if index[w] == usize::MAX {
                    work.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            work.pop();
            if let Some(&(parent, _)) = work.last() {
                low[parent] = low[parent].min(low[v]);
            }
            if low[v] == index[v] {
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    component[w] = count;
                    if w == v {
                        break;
                    }
                }
                count += 1;
            }
        }
    }
    component
}
