/**
 * What the active notebook's kernel says about its models, through the
 * `jupyter_llm_manager` comm. Holds ids and numbers only; the kernel pushes a
 * snapshot on every manager event, so nothing here polls it.
 */
import { INotebookTracker, NotebookActions, NotebookPanel } from '@jupyterlab/notebook';
import { ISessionContext } from '@jupyterlab/apputils';
import { Kernel, KernelMessage } from '@jupyterlab/services';
import { IDisposable } from '@lumino/disposable';
import { ISignal, Signal } from '@lumino/signaling';

export const TARGET = 'jupyter_llm_manager';
const ANSWER_TIMEOUT_MS = 120_000;

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
}

export interface ISnapshot {
  type: 'snapshot';
  time: number;
  loaded: number;
  held_bytes: number;
  held_str: string;
  reserved_str: string;
  models: IModelRow[];
  devices: { device: string; name: string; total: string; free: string; budget: string; held: string }[];
}

export interface IResult {
  ok: boolean;
  message: string;
}

interface IKernelEntry {
  comm: Kernel.IComm | null;
  snapshot: ISnapshot | null;
}

export class LLMKernelState implements IDisposable {
  constructor(private readonly _notebooks: INotebookTracker) {
    _notebooks.currentChanged.connect(this._onNotebook, this);
    NotebookActions.executed.connect(this._onExecuted, this);
    this._onNotebook();
  }

  /** The current kernel's models, or null where the extension is not loaded in it. */
  get snapshot(): ISnapshot | null {
    const kernel = this._session?.session?.kernel;
    return kernel ? (this._kernels.get(kernel.id)?.snapshot ?? null) : null;
  }

  /** The active notebook's name, or null when no notebook is open. */
  get notebookName(): string | null {
    return this._notebooks.currentWidget?.title.label ?? null;
  }

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  get isDisposed(): boolean {
    return this._disposed;
  }

  /** Ask the current kernel to act; resolves with its answer (after a running cell ends). */
  send(action: string, model?: string): Promise<IResult> {
    const kernel = this._session?.session?.kernel;
    const comm = kernel ? this._kernels.get(kernel.id)?.comm : null;
    if (!comm || comm.isDisposed) {
      return Promise.resolve({
        ok: false,
        message: 'The LLM manager is not loaded in this kernel: run %load_ext jupyter_llm_manager'
      });
    }
    const request = `${Date.now()}-${++this._requests}`;
    return new Promise<IResult>(resolve => {
      const timer = window.setTimeout(() => {
        this._pending.delete(request);
        resolve({ ok: false, message: 'The kernel did not answer (is a long cell still running?)' });
      }, ANSWER_TIMEOUT_MS);
      this._pending.set(request, result => {
        window.clearTimeout(timer);
        resolve(result);
      });
      comm.send({ action, model: model ?? null, request });
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
    this._connect(this._session?.session?.kernel ?? null);
    this._changed.emit();
  }

  private _onStatus(session: ISessionContext, status: Kernel.Status): void {
    const kernel = session.session?.kernel;
    if (!kernel) {
      return;
    }
    if (status === 'restarting' || status === 'autorestarting' || status === 'dead') {
      this._kernels.delete(kernel.id); // a restarted kernel has to load the extension again
      this._changed.emit();
    } else if (status === 'idle' && !this._kernels.has(kernel.id)) {
      this._connect(kernel);
    }
  }

  /**
   * After a cell that may have loaded the extension (`%load_ext jupyter_llm_manager`, `%llm`, `%%llm`), ask
   * again if this kernel had none: the kernel never opens the comm itself, so that frontends without this
   * extension (classic Notebook, VS Code, nbclient) never get a comm they cannot handle.
   */
  private _onExecuted(_: unknown, args: { cell: { model: { sharedModel: { getSource(): string } } } }): void {
    const kernel = this._session?.session?.kernel;
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

  /** Open our comm to the kernel: it answers with a snapshot, or closes it where the extension is not loaded. */
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
    comm.open({ action: 'refresh' }); // closed at once by a kernel without the extension
  }

  private _adopt(kernel: Kernel.IKernelConnection, comm: Kernel.IComm): void {
    comm.onMsg = message => this._receive(kernel, comm, message.content.data);
    comm.onClose = () => {
      const entry = this._kernels.get(kernel.id);
      if (entry && entry.comm === comm) {
        entry.comm = null;
        entry.snapshot = null;
        this._changed.emit();
      }
    };
  }

  private _receive(kernel: Kernel.IKernelConnection, comm: Kernel.IComm, data: unknown): void {
    const message = data as { type?: string; request?: string } & Partial<ISnapshot> & Partial<IResult>;
    if (message.type === 'snapshot') {
      this._kernels.set(kernel.id, { comm, snapshot: message as ISnapshot });
      this._changed.emit();
    } else if (message.type === 'result' && message.request) {
      this._pending.get(message.request)?.({ ok: !!message.ok, message: message.message ?? '' });
      this._pending.delete(message.request);
    }
  }

  private _session: ISessionContext | null = null;
  private _kernels = new Map<string, IKernelEntry>();
  private _targets = new Map<string, (comm: Kernel.IComm, msg: KernelMessage.ICommOpenMsg) => void>();
  private _pending = new Map<string, (result: IResult) => void>();
  private _requests = 0;
  private _disposed = false;
  private _changed = new Signal<this, void>(this);
}
