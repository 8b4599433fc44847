/** Small DOM helpers of the console: elements by id, table rows of text (never HTML from data), buttons. */

export const $ = <T extends HTMLElement = HTMLElement>(id: string): T => {
  const element = document.getElementById(id);
  if (!element) throw new Error(`#${id} is missing`);
  return element as T;
};

export type Cell = string | number | { text: string; className?: string; num?: boolean };

/** Fills a table cell with text (never HTML from data). */
export function setCell(td: HTMLTableCellElement, cell: Cell): void {
  if (typeof cell === 'object') {
    td.textContent = cell.text;
    td.className = cell.className ?? '';
    if (cell.num) td.classList.add('num');
  } else {
    td.textContent = String(cell);
    td.className = typeof cell === 'number' ? 'num' : '';
  }
}

/** Builds a table row of text cells. */
export function row(cells: Cell[]): HTMLTableRowElement {
  const tr = document.createElement('tr');
  for (const cell of cells) {
    const td = document.createElement('td');
    setCell(td, cell);
    tr.append(td);
  }
  return tr;
}

export function fill(tbodyId: string, rows: HTMLTableRowElement[], empty: string, columns: number): void {
  const body = $(tbodyId);
  if (rows.length === 0) {
    const tr = document.createElement('tr');
    const td = document.createElement('td');
    td.colSpan = columns;
    td.className = 'hint';
    td.textContent = empty;
    tr.append(td);
    rows = [tr];
  }
  body.replaceChildren(...rows);
}

export function button(text: string, label: string, onClick: () => void): HTMLButtonElement {
  const element = document.createElement('button');
  element.type = 'button';
  element.textContent = text;
  element.setAttribute('aria-label', label);
  element.addEventListener('click', onClick);
  return element;
}

/** Shows a result line: `ok` green, `error` red (the API's code and message as they came), otherwise plain. */
export function say(id: string, text: string, kind: 'ok' | 'error' | '' = ''): void {
  const element = $(id);
  element.className = kind;
  element.textContent = text;
}
