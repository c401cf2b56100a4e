/**
 * The "LLM models" side panel: the active kernel's models with Unload / Pin,
 * Unload all and Free memory, then the other notebooks' models on this machine
 * (Unload on an idle, unpinned one asks its kernel to unload it). It renders snapshots the kernel pushes; the only
 * timer re-renders relative times ("12s ago") locally.
 *
 * An action shows what it waits for while it runs ("runs when the cell
 * finishes", a model in use). Its answer belongs to the kernel and the state
 * it left: it is shown under that kernel only, until the models it concerns
 * change (a model unloaded, then loaded again).
 */
import { LabIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

import { IMachine, IModelRow, IResult, ISnapshot, LLMKernelState, NO_KERNEL, QUEUED_NOTE } from './state';

const ICON_SVG =
  '<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">' +
  '<g class="jp-icon3" fill="#616161"><path d="M9 3h6v2h2a2 2 0 0 1 2 2v2h2v6h-2v2a2 2 0 0 1-2 2h-2v2H9v-2H7a2 ' +
  '2 0 0 1-2-2v-2H3V9h2V7a2 2 0 0 1 2-2h2V3zm-2 4v10h10V7H7zm2 2h6v6H9V9z"/></g></svg>';

export const llmIcon = new LabIcon({ name: 'jupyter-llm-manager:chip', svgstr: ICON_SVG });

const RERENDER_MS = 10_000;

/** What a card says while an action runs. */
const DOING: { [action: string]: string } = {
  load: 'loading',
  unload: 'unloading',
  pin: 'pinning',
  unpin: 'unpinning',
  unload_all: 'unloading all',
  free_memory: 'collecting',
  ask_to_unload: 'asking its kernel to unload'
};

interface IPending {
  action: string;
  doing: string;
  note: string;
  queued: boolean;
}

/** An answer, the kernel it came from, and the state of what it concerns right after it. */
interface IShownAnswer {
  result: IResult;
  kernel: string | null;
  model: string | null;
  member: string | null;
  state: string;
}

/**
 * The state an answer concerns: one model's (state and pin), every model's for a global action, or another
 * notebook's model (its manager's `member`).
 */
function concerned(snapshot: ISnapshot | null, model: string | null, member: string | null = null): string {
  if (!snapshot) {
    return '';
  }
  if (member !== null) {
    const theirs = (snapshot.machine?.models ?? []).filter(row => row.member === member && row.model === model);
    return theirs.map(row => `${row.model}:${row.state}:${row.pinned}`).join(',') || 'gone';
  }
  const rows = model === null ? snapshot.models : snapshot.models.filter(row => row.id === model);
  return rows.map(row => `${row.id}:${row.state}:${row.pinned}`).join(',') || 'gone';
}

export class LLMModelsPanel extends Widget {
  constructor(private readonly _state: LLMKernelState) {
    super();
    this.id = 'jupyter-llm-manager-panel';
    this.addClass('jp-LLMPanel');
    this.title.icon = llmIcon;
    this.title.caption = 'LLM models';
    this.title.label = '';
    _state.changed.connect(this.render, this);
    this._timer = window.setInterval(() => this.render(), RERENDER_MS);
    this.render();
  }

  dispose(): void {
    window.clearInterval(this._timer);
    this._state.changed.disconnect(this.render, this);
    super.dispose();
  }

  /**
   * Send an action to the kernel; show it pending (and what it waits for), then its answer. `member`: another
   * notebook's manager, which the kernel asks (`ask_to_unload`).
   */
  async act(action: string, model?: string, member?: string): Promise<IResult> {
    const kernel = this._state.kernelId;
    const key = pendingKey(kernel, model ?? null, member ?? null);
    const pending: IPending = { action, doing: DOING[action] ?? action, note: '', queued: false };
    this._pending.set(key, pending);
    this.render();
    const result = await this._state.send(action, model, progress => {
      pending.queued = pending.queued || !!progress.queued;
      pending.note = progress.queued ? pending.note : progress.note;
      this.render();
    }, member ? { member } : {});
    this._pending.delete(key);
    this._answer = {
      result,
      kernel,
      model: model ?? null,
      member: member ?? null,
      state: concerned(this._state.snapshot, model ?? null, member ?? null)
    };
    this.render();
    return result;
  }

  /** Take back an Unload that waits for an answer to end; its own answer then says it stays loaded. */
  async cancelUnload(model: string): Promise<void> {
    const pending = this._pendingFor(model);
    if (pending) {
      pending.doing = 'taking the unload back';
      this.render();
    }
    const result = await this._state.send('cancel_unload', model);
    if (!result.ok) {
      const state = concerned(this._state.snapshot, model);
      this._answer = { result, kernel: this._state.kernelId, model, member: null, state };
      this.render();
    }
  }

  render(): void {
    const snapshot = this._state.snapshot;
    const body = document.createElement('div');
    body.append(element('h2', 'LLM models', 'jp-LLMPanel-title'));
    const notebook = this._state.notebookName;
    body.append(element('div', notebook ? `Kernel of ${notebook}` : 'No notebook is open.', 'jp-LLMPanel-kernel'));
    if (!snapshot) {
      if (notebook && !this._state.hasKernel) {
        body.append(element('div', NO_KERNEL, 'jp-LLMPanel-empty'));
      } else if (notebook) {
        const help = element('div', 'The LLM manager is not loaded in this kernel. Run this in a cell:', 'jp-LLMPanel-empty');
        help.append(element('pre', '%load_ext jupyter_llm_manager'));
        body.append(help);
      }
    } else {
      body.append(this._list(snapshot.models));
      for (const note of snapshot.lost ?? []) {
        body.append(element('div', note, 'jp-LLMPanel-lost'));
      }
      const actions = element('div', '', 'jp-LLMPanel-actions');
      const global = this._pendingFor(null);
      actions.append(
        this._button(label('Unload all', 'unload_all', global), () => this.act('unload_all'),
          !snapshot.loaded || !!global),
        this._button(label('Free memory', 'free_memory', global), () => this.act('free_memory'), !!global)
      );
      body.append(actions);
      if (global?.note) {
        body.append(element('div', pendingText(global), 'jp-LLMPanel-pending'));
      }
      for (const device of snapshot.devices) {
        const notebooks = device.notebooks ? ` · other notebooks ${device.notebooks}` : '';
        const line = element('div', `${device.device}: ${device.held} reserved for models${notebooks} · ` +
          `${device.free} free of ${device.total} · budget ${device.budget}`, 'jp-LLMPanel-device');
        line.title = RESERVED_HELP;
        body.append(line);
      }
      if (snapshot.machine) {
        body.append(this._machine(snapshot.machine));
      }
    }
    const answer = this._shownAnswer(snapshot);
    if (answer) {
      body.append(element('pre', answer.message, answer.ok ? 'jp-LLMPanel-message' : 'jp-LLMPanel-error'));
    }
    this.node.replaceChildren(body);
  }

  /** The last answer, while it still describes what is shown: the same kernel, the same state of its models. */
  private _shownAnswer(snapshot: ISnapshot | null): IResult | null {
    const answer = this._answer;
    if (!answer) {
      return null;
    }
    if (answer.kernel !== this._state.kernelId) {
      return null; // another notebook's kernel: kept for when its notebook is active again
    }
    if (!snapshot || concerned(snapshot, answer.model, answer.member) !== answer.state) {
      this._answer = null; // the kernel is gone, or what it said has changed since
      return null;
    }
    return answer.result;
  }

  private _pendingFor(model: string | null, member: string | null = null): IPending | undefined {
    return this._pending.get(pendingKey(this._state.kernelId, model, member));
  }

  /** "Other notebooks on this machine": their models per device, Unload on the idle, unpinned ones. */
  private _machine(machine: IMachine): HTMLElement {
    const section = element('div', '', 'jp-LLMPanel-machine');
    section.append(element('h3', 'Other notebooks on this machine', 'jp-LLMPanel-subtitle'));
    const empty = machine.problem || (!machine.cooperating ? 'Cooperation is off: other notebooks are not shown.' :
      machine.models.length ? '' : 'No other notebook holds a model.');
    if (empty) {
      section.append(element('div', empty, 'jp-LLMPanel-device'));
      return section;
    }
    const now = Date.now() / 1000;
    for (const model of machine.models) {
      const card = element('div', '', `jp-LLMPanel-row jp-LLMPanel-other jp-mod-${model.state}`);
      card.dataset.model = model.model;
      card.dataset.notebook = model.notebook;
      const pending = this._pendingFor(model.model, model.member);
      const notes = [model.in_use ? `in use (${model.in_use})` : '', model.pinned ? 'pinned' : '',
        model.borrowers?.length ? `lent to ${model.borrowers.join(', ')}` : ''].filter(Boolean);
      const state = pending ? `${pending.doing}…` : [model.state, ...notes].join(' · ');
      const head = element('div', '', 'jp-LLMPanel-head');
      head.append(element('span', model.model, 'jp-LLMPanel-id'), element('span', state, 'jp-LLMPanel-state'));
      const used = model.last_used ? `used ${ago(now - model.last_used)} ago` : '';
      const facts = element('div', '', 'jp-LLMPanel-facts');
      const where = element('span', model.notebook, 'jp-LLMPanel-notebook');
      where.title = model.path || model.notebook; // the full path on hover
      facts.append(where, ' · ' + [model.device, model.memory, used].filter(Boolean).join(' · '));
      const buttons = element('div', '', 'jp-LLMPanel-buttons');
      const unload = this._button(label('Unload', 'ask_to_unload', pending),
        () => this.act('ask_to_unload', model.model, model.member), !model.unloadable || !!pending);
      unload.title = model.unloadable ? `ask ${model.notebook} to unload it` :
        'only an idle, unpinned model can be unloaded from another notebook';
      buttons.append(unload);
      card.append(head, facts, buttons);
      section.append(card);
    }
    return section;
  }

  /** One card per model: name and state, then device, memory and last use, then its buttons. */
  private _list(models: IModelRow[]): HTMLElement {
    const list = element('div', '', 'jp-LLMPanel-list');
    const now = Date.now() / 1000;
    for (const model of models) {
      const card = element('div', '', `jp-LLMPanel-row jp-mod-${model.state}`);
      card.dataset.model = model.id;
      const head = element('div', '', 'jp-LLMPanel-head');
      const name = element('span', model.id, 'jp-LLMPanel-id');
      if (model.aliases.length) {
        name.append(element('span', ` (${model.aliases.join(', ')})`, 'jp-LLMPanel-alias'));
      }
      if (model.trust_remote_code) {
        name.append(element('span', ' ⚠ remote code', 'jp-LLMPanel-warning'));
      }
      if (model.base_str) {
        name.append(element('div', `adapter ${model.base_str}`, 'jp-LLMPanel-base')); // a LoRA adapter's base
      }
      const pending = this._pendingFor(model.id);
      const state = element('span', pending ? `${pending.doing}…` : stateText(model), 'jp-LLMPanel-state');
      state.title = model.error ?? model.waiting_for ?? '';
      head.append(name, state);
      // a remote model: where it runs, once (its memory is the server's)
      const place = model.remote ? (model.endpoint ? `remote: ${model.endpoint}` : 'remote server') : model.device;
      const memory = model.remote ? '' : [model.actual && `weights ${model.actual}`,
        model.estimated && `needs ${model.estimated}`].filter(Boolean).join(' · ');
      const used = model.last_used ? `used ${ago(now - model.last_used)} ago` : '';
      const left = model.expires_at ? `unloads in ${ago(model.expires_at - now)}` : '';
      const facts = element('div', [place, memory, used, left].filter(Boolean).join(' · '),
        'jp-LLMPanel-facts');
      facts.title = SIZES_HELP;
      const buttons = element('div', '', 'jp-LLMPanel-buttons');
      const pin = model.pinned ? 'unpin' : 'pin';
      // an Unload that waits for an answer to end: the same button takes it back
      const waiting = pending?.action === 'unload' && !pending.queued;
      const unload = waiting
        ? this._button('Cancel', () => this.cancelUnload(model.id), false)
        : this._button(label('Unload', 'unload', pending), () => this.act('unload', model.id),
          model.state !== 'loaded' || !!pending);
      unload.title = waiting ? 'take the Unload back: the model stays loaded' : '';
      buttons.append(
        unload,
        this._button(label(model.pinned ? 'Unpin' : 'Pin', pin, pending), () => this.act(pin, model.id), !!pending)
      );
      card.append(head, facts, buttons);
      if (pending?.note) {
        card.append(element('div', pendingText(pending), 'jp-LLMPanel-pending'));
      }
      if (model.error && (model.state === 'failed' || model.reachable === false)) {
        card.append(element('div', model.error, 'jp-LLMPanel-error'));
      }
      list.append(card);
    }
    return list;
  }

  private _button(label: string, onClick: () => void, disabled: boolean): HTMLButtonElement {
    const button = document.createElement('button');
    button.className = 'jp-Button jp-mod-styled jp-mod-reject jp-LLMPanel-button';
    button.textContent = label;
    button.disabled = disabled;
    button.addEventListener('click', onClick);
    return button;
  }

  private _pending = new Map<string, IPending>();
  private _answer: IShownAnswer | null = null;
  private _timer: number;
}

const SIZES_HELP = 'weights: measured after the load; needs: the estimate from metadata, weights plus the ' +
  'KV cache and overhead it takes to generate';
const RESERVED_HELP = 'reserved: what this kernel counts against the budget for its loaded models: their ' +
  'measured weights plus the KV cache and overhead of their estimates';

/** Where an action's progress is kept: the kernel, and the model (of another notebook's manager, `member`). */
function pendingKey(kernel: string | null, model: string | null, member: string | null): string {
  return member === null ? `${kernel}:${model ?? ''}` : `${kernel}:${member}/${model ?? ''}`;
}

function pendingText(pending: IPending): string {
  return pending.note ? `${pending.doing}: ${pending.note}` : `${pending.doing}…`;
}

/** A button's label; the clicked one says at once when its click waits for the running cell. */
function label(text: string, action: string, pending: IPending | undefined): string {
  return pending?.action === action && pending.queued ? `${text} · ${QUEUED_NOTE}` : text;
}

function stateText(model: IModelRow): string {
  const notes = [model.in_use ? `in use (${model.in_use})` : '', model.pinned ? 'pinned' : '',
    model.reachable === false ? 'unreachable' : '',
    model.lent_to?.length ? `lent to ${model.lent_to.join(', ')}` : ''].filter(Boolean);
  return notes.length ? `${model.state} · ${notes.join(', ')}` : model.state;
}

function element(tag: string, text: string, className?: string): HTMLElement {
  const node = document.createElement(tag);
  node.textContent = text;
  if (className) {
    node.className = className;
  }
  return node;
}

function ago(seconds: number): string {
  if (seconds < 60) {
    return `${Math.max(0, Math.round(seconds))}s`;
  }
  if (seconds < 3600) {
    return `${Math.floor(seconds / 60)}m`;
  }
  return `${Math.floor(seconds / 3600)}h ${Math.floor((seconds % 3600) / 60)}m`;
}
