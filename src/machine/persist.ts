/** Parts with state that snapshots must carry return plain, JSON-serializable data and can be rebuilt from it. */
export interface Persistent<S> {
  save(): S;
  restore(state: S): void;
}
