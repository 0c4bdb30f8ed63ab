/** What every view knows about the logged-in user. */
import type { Project, Role, WhoAmI } from "./api.js";

export interface Session {
  who: WhoAmI;
  role: Role;
  isAdmin: boolean;
  /** member or admin: may create, change and delete. */
  canWrite: boolean;
  /** All projects (admins only; empty for others). */
  projects: Project[];
  /** Reloads `projects` (after an admin creates or deletes one). */
  refreshProjects(): Promise<void>;
}

/** A view renders into `main` and returns its cleanup (timers, sockets), run when the view is left. */
export type View = (main: HTMLElement, session: Session, arg: string) => (() => void) | void;
