/**
 * What the active notebook's kernel says about its models, through the
 * `jupyter_llm_manager` comm. Holds ids and numbers only; the kernel pushes a
 * snapshot on every manager event, so nothing here polls it.
 *
 * JupyterLab >= 4.4 sends comm messages on a kernel subshell ("Kernel comms
 * over subshells") when the kernel has them (ipykernel >= 7): the comm is
 * opened only once its subshell is there, so the kernel answers, and acts on
 * clicks, while a cell runs. Without subshells a click sent during a cell
 * runs when the cell finishes: `actsDuringCells` says which, so the panel can
 * say so at once.
 */
import { INotebookTracker, NotebookActions, NotebookPanel } from '@jupyterlab/notebook';
import { ISessionContext } from '@jupyterlab/apputils';
import { Kernel, KernelMessage } from '@jupyterlab/services';
import { IDisposable } from '@lumino/disposable';
import { ISignal, Signal } from '@lumino/signaling';

export const TARGET = 'jupyter_llm_manager';
const ANSWER_TIMEOUT_MS = 120_000;
const SUBSHELL_WAIT_MS = 5_000;

export interface IModelRow {
  id: string;
  aliases: string[];
  backend: string;
  device: string;
  state: 'registered' | 'waiting' | 'loading' | 'loaded' | 'unloading' | 'failed';
  in_use: number;
  pinned: boolean;
  remote: boolean;
  estimated: string;
  actual: string;
  last_used: number | null;
  expires_at: number | null;
  error: string | null;
  trust_remote_code: boolean;
  reachable: boolean | null;
  waiting_for: string | null;
  endpoint?: string | null;
  /** A LoRA adapter: the model it runs on, and how ("on qwen (shared)"); empty otherwise. */
  base?: string | null;
  base_str?: string;
  /** Who is answered from this copy now (other notebooks borrowing it). */
  lent_to?: string[];
}

/** A model another notebook (another manager of this user) holds on this machine. */
export interface IMachineModel {
  member: string;
  pid: number;
  /** Its notebook, short: relative to the Jupyter root (else to the home folder); `path`: in full. */
  notebook: string;
  path: string;
  model: string;
  device: string;
  bytes: number;
  memory: string;
  state: string;
  in_use: number;
  pinned: boolean;
  last_used: number | null;
  /** Loaded, idle and unpinned: its manager may be asked to unload it. */
  unloadable: boolean;
  /** Who is answered from this copy now (notebooks borrowing it instead of loading their own). */
  borrowers?: string[];
}

export interface IMachine {
  cooperating: boolean;
  /** Why the other notebooks are not known now ('' when they are). */
  problem: string;
  models: IMachineModel[];
}

export interface ISnapshot {
  type: 'snapshot';
  time: number;
  loaded: number;
  held_bytes: number;
  held_str: string;
  reserved_str: string;
  models: IModelRow[];
  devices: {
    device: string;
    name: string;
    total: string;
    free: string;
    budget: string;
    held: string;
    notebooks?: string;
  }[];
  machine?: IMachine;
  /** This kernel's models lost lately where it did not ask (still unloaded), one line each, newest first. */
  lost?: string[];
}

export interface IResult {
  ok: boolean;
  message: string;
}

/** How an action is going: what it waits for, as soon as the kernel or the panel knows. */
export interface IProgress {
  note: string;
  /** It waits for the running cell: the kernel reads it once the cell ends (no subshell for our comm). */
  queued?: boolean;
}

/** What the panel says of a notebook opened without a kernel. */
export const NO_KERNEL = 'This notebook has no kernel: choose one (Kernel › Change Kernel…) to use the LLM manager.';

/** What a click that waits for the running cell says. */
export const QUEUED_NOTE = 'runs when the cell finishes';

interface IKernelEntry {
  comm: Kernel.IComm | null;
  snapshot: ISnapshot | null;
}

interface IRequest {
  kernel: string;
  done: (result: IResult) => void;
  progress: (progress: IProgress) => void;
}

/** What JupyterLab's comm handler has beside `Kernel.IComm` (JupyterLab >= 4.4). */
interface ISubshellComm {
  subshellId?: string | null;
  subshellStarted?: Promise<void>;
}

/** Resolves once the comm's subshell is there, or at once where it will have none. */
async function subshellReady(kernel: Kernel.IKernelConnection, comm: Kernel.IComm): Promise<void> {
  try {
    await kernel.info;
  } catch {
    return;
  }
  const started = (comm as Kernel.IComm & ISubshellComm).subshellStarted;
  if (!kernel.supportsSubshells || comm.commsOverSubshells === 'disabled' || !started) {
    return;
  }
  let timer = 0;
  const late = new Promise<void>(resolve => (timer = window.setTimeout(resolve, SUBSHELL_WAIT_MS)));
  await Promise.race([started.catch(() => undefined), late]);
  window.clearTimeout(timer);
}

export class LLMKernelState implements IDisposable {
  constructor(private readonly _notebooks: INotebookTracker) {
    _notebooks.currentChanged.connect(this._onNotebook, this);
    NotebookActions.executed.connect(this._onExecuted, this);
    this._onNotebook();
  }

  /** The current kernel's models, or null where the extension is not loaded in it. */
  get snapshot(): ISnapshot | null {
    const kernel = this._kernel;
    return kernel ? (this._kernels.get(kernel.id)?.snapshot ?? null) : null;
  }

  /** The current kernel's id (what an answer shown in the panel belongs to), or null. */
  get kernelId(): string | null {
    return this._kernel?.id ?? null;
  }

  /** The active notebook's name, or null when no notebook is open. */
  get notebookName(): string | null {
    return this._notebooks.currentWidget?.title.label ?? null;
  }

  /** Whether a click reaches the kernel now: no cell runs, or the comm has a subshell of its own. */
  get actsDuringCells(): boolean {
    const kernel = this._kernel;
    const comm = kernel ? this._kernels.get(kernel.id)?.comm : null;
    return !!comm && !!(comm as Kernel.IComm & ISubshellComm).subshellId;
  }

  /** Whether the active notebook has a kernel (a notebook opened with "No Kernel" has none). */
  get hasKernel(): boolean {
    return this._kernel !== null;
  }

  /** Whether the current kernel runs a cell now. */
  get busy(): boolean {
    return this._kernel?.status === 'busy';
  }

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  get isDisposed(): boolean {
    return this._disposed;
  }

  /**
   * Ask the current kernel to act; resolves with its answer. `progress` hears what the action waits for:
   * the running cell (a kernel without subshells), or the kernel's note (a model in use).
   */
  send(
    action: string,
    model?: string,
    progress: (progress: IProgress) => void = () => undefined,
    extra: { [key: string]: string } = {}
  ): Promise<IResult> {
    const kernel = this._kernel;
    const comm = kernel ? this._kernels.get(kernel.id)?.comm : null;
    if (!kernel) {
      return Promise.resolve({ ok: false, message: NO_KERNEL });
    }
    if (!comm || comm.isDisposed) {
      return Promise.resolve({
        ok: false,
        message: 'The LLM manager is not loaded in this kernel: run %load_ext jupyter_llm_manager'
      });
    }
    const request = `${Date.now()}-${++this._requests}`;
    const waitsForCell = this.busy && !this.actsDuringCells;
    return new Promise<IResult>(resolve => {
      // behind a running cell the answer comes when the cell ends, however long it runs
      const timer = waitsForCell
        ? 0
        : window.setTimeout(() => {
            this._pending.delete(request);
            resolve({ ok: false, message: 'The kernel did not answer (is a long cell still running?)' });
          }, ANSWER_TIMEOUT_MS);
      this._pending.set(request, {
        kernel: kernel.id,
        done: result => {
          window.clearTimeout(timer);
          resolve(result);
        },
        progress: heard => {
          window.clearTimeout(timer); // the kernel works on it: an Unload waits for an answer, however long
          progress(heard);
        }
      });
      comm.send({ ...extra, action, model: model ?? null, request });
      if (waitsForCell) {
        progress({ note: QUEUED_NOTE, queued: true });
      }
    });
  }

  dispose(): void {
    if (this._disposed) {
      return;
    }
    this._disposed = true;
    this._notebooks.currentChanged.disconnect(this._onNotebook, this);
    NotebookActions.executed.disconnect(this._onExecuted, this);
    this._watch(null);
    Signal.clearData(this);
  }

  private get _kernel(): Kernel.IKernelConnection | null {
    return this._session?.session?.kernel ?? null;
  }

  private _onNotebook(): void {
    const panel: NotebookPanel | null = this._notebooks.currentWidget;
    this._watch(panel?.sessionContext ?? null);
    this._changed.emit();
  }

  private _watch(session: ISessionContext | null): void {
    if (this._session) {
      this._session.kernelChanged.disconnect(this._onKernelChanged, this);
      this._session.statusChanged.disconnect(this._onStatus, this);
    }
    this._session = session;
    if (session) {
      session.kernelChanged.connect(this._onKernelChanged, this);
      session.statusChanged.connect(this._onStatus, this);
      this._connect(session.session?.kernel ?? null);
    }
  }

  private _onKernelChanged(): void {
    this._connect(this._kernel);
    this._changed.emit();
  }

  private _onStatus(session: ISessionContext, status: Kernel.Status): void {
    const kernel = session.session?.kernel;
    if (!kernel) {
      return;
    }
    if (status === 'restarting' || status === 'autorestarting' || status === 'dead') {
      this._kernels.delete(kernel.id); // a restarted kernel has to load the extension again
      this._abandon(kernel.id, 'The kernel restarted before it answered.');
      this._changed.emit();
    } else if (status === 'idle' && !this._kernels.has(kernel.id)) {
      this._connect(kernel);
    } else {
      this._changed.emit(); // busy or idle: whether a click acts now
    }
  }

  /**
   * After a cell that may have loaded the extension (`%load_ext jupyter_llm_manager`, `%llm`, `%%llm`), ask
   * again if this kernel had none: the kernel never opens the comm itself, so that frontends without this
   * extension (classic Notebook, VS Code, nbclient) never get a comm they cannot handle.
   */
  private _onExecuted(_: unknown, args: { cell: { model: { sharedModel: { getSource(): string } } } }): void {
    const kernel = this._kernel;
    const source = args.cell.model.sharedModel.getSource();
    if (!kernel || !/jupyter_llm_manager|%llm/.test(source)) {
      return;
    }
    const entry = this._kernels.get(kernel.id);
    if (!entry || !entry.comm || entry.comm.isDisposed) {
      this._kernels.delete(kernel.id);
      this._connect(kernel);
    }
  }

  /**
   * Open our comm to the kernel, on its own subshell where the kernel has them (so a running cell does not
   * hold the answer back): it answers with a snapshot, or closes it where the extension is not loaded.
   */
  private _connect(kernel: Kernel.IKernelConnection | null): void {
    if (!kernel || this._kernels.has(kernel.id)) {
      return;
    }
    this._kernels.set(kernel.id, { comm: null, snapshot: null });
    const adopt = (comm: Kernel.IComm, message: KernelMessage.ICommOpenMsg): void => {
      this._adopt(kernel, comm);
      this._receive(kernel, comm, message.content.data);
    };
    kernel.removeCommTarget(TARGET, this._targets.get(kernel.id) ?? adopt);
    kernel.registerCommTarget(TARGET, adopt);
    this._targets.set(kernel.id, adopt);
    const comm = kernel.createComm(TARGET);
    this._adopt(kernel, comm);
    void subshellReady(kernel, comm).then(() => {
      if (!comm.isDisposed && !kernel.isDisposed) {
        // closed at once by a kernel without the extension; the notebook's path tells the kernel the server's root
        comm.open({ action: 'refresh', path: this._session?.path ?? '' });
      }
    });
  }

  private _adopt(kernel: Kernel.IKernelConnection, comm: Kernel.IComm): void {
    comm.onMsg = message => this._receive(kernel, comm, message.content.data);
    comm.onClose = () => {
      const entry = this._kernels.get(kernel.id);
      if (entry && entry.comm === comm) {
        entry.comm = null;
        entry.snapshot = null;
        this._abandon(kernel.id, 'The LLM manager was unloaded from this kernel before it answered.');
        this._changed.emit();
      }
    };
  }

  private _receive(kernel: Kernel.IKernelConnection, comm: Kernel.IComm, data: unknown): void {
    const message = data as { type?: string; request?: string; snapshot?: ISnapshot } & Partial<ISnapshot> &
      Partial<IResult>;
    if (message.type === 'snapshot') {
      this._kernels.set(kernel.id, { comm, snapshot: message as ISnapshot });
      this._changed.emit();
    } else if (message.type === 'pending' && message.request) {
      this._pending.get(message.request)?.progress({ note: message.message ?? '' });
    } else if (message.type === 'result' && message.request) {
      if (message.snapshot?.type === 'snapshot') {
        this._kernels.set(kernel.id, { comm, snapshot: message.snapshot }); // the state the outcome left
      }
      this._pending.get(message.request)?.done({ ok: !!message.ok, message: message.message ?? '' });
      this._pending.delete(message.request);
    }
  }

  /** Answer every request still waiting on a kernel that is gone. */
  private _abandon(kernel: string, why: string): void {
    for (const [request, pending] of [...this._pending]) {
      if (pending.kernel === kernel) {
        this._pending.delete(request);
        pending.done({ ok: false, message: why });
      }
    }
  }

  private _session: ISessionContext | null = null;
  private _kernels = new Map<string, IKernelEntry>();
  private _targets = new Map<string, (comm: Kernel.IComm, msg: KernelMessage.ICommOpenMsg) => void>();
  private _pending = new Map<string, IRequest>();
  private _requests = 0;
  private _disposed = false;
  private _changed = new Signal<this, void>(this);
}
