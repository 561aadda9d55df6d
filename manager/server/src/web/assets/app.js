// The cluster view: renders the manager's `view` events (docs/monitoring.md). Data is
// put in the page as text only, never as markup.
'use strict';

// What a test (or a curious user) can read: when the page was loaded and how many
// views it has drawn since, without a reload.
window.meshView = { loadedAt: Date.now(), updates: 0, version: null, renderMs: null };

let offset = 0; // the manager's clock minus ours, from the last view

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function age(ms) {
  const s = Math.max(0, Math.floor((Date.now() + offset - ms) / 1000));
  if (s < 60) return s + 's';
  if (s < 3600) return Math.floor(s / 60) + 'm';
  if (s < 86400) return Math.floor(s / 3600) + 'h';
  return Math.floor(s / 86400) + 'd';
}

function hueStyle(node, hue) {
  node.style.setProperty('--hue', 'hsl(' + hue + ', 62%, 46%)');
}

function serviceEntry(service) {
  const entry = el('div', 'service');
  entry.dataset.service = service.name;
  hueStyle(entry, service.hue);
  entry.append(el('span', 'name', service.name));
  const replicas = el('span', 'replicas', service.running + '/' + service.desired);
  if (service.running < service.desired) replicas.classList.add('short');
  entry.append(replicas);
  if (service.ports.length) entry.append(el('span', 'ports', service.ports.join(', ')));
  entry.append(el('span', 'image', service.image));
  if (service.update) {
    const paused = service.update.state.endsWith('paused');
    const label = service.update.state.replace('_', ' ') + ' ' + service.update.done + '/' + service.desired;
    const badge = el('span', 'badge ' + (paused ? 'paused' : 'update'), label);
    badge.title = service.update.message;
    badge.dataset.update = service.update.state;
    entry.append(badge);
  }
  return entry;
}

function taskCard(task, hues) {
  const card = el('div', 'task');
  card.dataset.task = task.name;
  card.dataset.state = task.state;
  hueStyle(card, hues.get(task.service) || 0);
  if (task.desired !== 'running') card.classList.add('stopping');
  if (!task.current) card.classList.add('outdated');
  const title = el('div', 'title');
  title.append(el('span', '', task.name));
  title.append(el('span', 'state-' + task.state.toLowerCase(), task.desired === 'running' ? task.state : 'stopping'));
  card.append(title);
  const bits = [];
  if (task.health) bits.push(task.health);
  if (task.addr) bits.push(task.addr);
  const detail = el('div', 'detail', bits.join(' · '));
  const ageSpan = el('span', 'age', (bits.length ? ' · ' : '') + age(task.created_at_ms));
  ageSpan.dataset.created = task.created_at_ms;
  detail.append(ageSpan);
  card.append(detail);
  if (task.message) card.title = task.message;
  return card;
}

function nodeColumn(node, hues) {
  const column = el('section', 'node ' + node.status);
  column.dataset.hostname = node.hostname;
  const name = el('h2', '', node.hostname);
  if (node.leader) {
    const mark = el('span', 'leader-mark', ' ★');
    mark.title = 'leader';
    name.append(mark);
  }
  column.append(name);
  const role = node.role + (node.manager_status ? ' (' + node.manager_status + ')' : '');
  column.append(el('div', 'meta', role + ' · ' + node.status + ' · ' + node.availability));
  const labels = el('div', 'labels');
  for (const [key, value] of Object.entries(node.labels)) {
    labels.append(el('span', '', value ? key + '=' + value : key));
  }
  column.append(labels);
  if (!node.tasks.length) column.append(el('div', 'empty', 'no tasks'));
  for (const task of node.tasks) column.append(taskCard(task, hues));
  return column;
}

function render(view) {
  const started = performance.now();
  offset = view.now_ms - Date.now();
  const hues = new Map(view.services.map((s) => [s.name, s.hue]));
  const tasks = view.nodes.reduce((n, node) => n + node.tasks.length, 0);
  document.getElementById('summary').textContent =
    view.nodes.length + ' nodes · ' + view.services.length + ' services · ' + tasks + ' tasks' +
    (view.leader ? ' · leader ' + view.leader : ' · no leader');
  document.getElementById('services').replaceChildren(...view.services.map(serviceEntry));
  const columns = view.nodes.map((node) => nodeColumn(node, hues));
  if (view.unassigned.length) {
    const waiting = el('section', 'node unassigned');
    waiting.dataset.hostname = '';
    waiting.append(el('h2', '', 'waiting for a node'));
    for (const task of view.unassigned) waiting.append(taskCard(task, hues));
    columns.push(waiting);
  }
  document.getElementById('nodes').replaceChildren(...columns);
  window.meshView.updates += 1;
  window.meshView.version = view.version;
  window.meshView.renderMs = performance.now() - started;
}

function connect() {
  const status = document.getElementById('connection');
  const events = new EventSource('api/events');
  events.addEventListener('view', (e) => {
    status.textContent = 'live';
    status.className = 'connection live';
    render(JSON.parse(e.data));
  });
  // EventSource reconnects by itself; say so meanwhile.
  events.onerror = () => {
    status.textContent = 'reconnecting';
    status.className = 'connection connecting';
  };
}

setInterval(() => {
  for (const span of document.querySelectorAll('.age')) {
    const prefix = span.textContent.startsWith(' · ') ? ' · ' : '';
    span.textContent = prefix + age(Number(span.dataset.created));
  }
}, 1000);

connect();
