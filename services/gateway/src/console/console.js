// Warren console's script. Served as a file by the gateway (the
// Content-Security-Policy allows scripts of this origin only, no inline
// script). Every value is written as text (textContent), never as HTML, so
// nothing an event or a queue name holds can run. Three parts, each doing
// nothing on a page without its element:
// - the queues page's counters, refreshed in place from a JSON endpoint;
// - the parking lot's "select all shown" box;
// - a task's live timeline, over Server-Sent Events.

// The queues page: polls `data-poll` (GET /console/queues.json) and writes
// each queue's counters into its row's `data-field` cells.
(function () {
  'use strict';
  var table = document.getElementById('queues');
  if (!table || !table.getAttribute('data-poll') || !window.fetch) {
    return;
  }
  var url = table.getAttribute('data-poll');
  var state = document.getElementById('queues-state');
  var every = 2000;

  function shown(field, value) {
    if (value === undefined || value === null) {
      return '-';
    }
    if (field === 'in_rate' || field === 'out_rate') {
      return (Math.round(Number(value) * 10) / 10).toString();
    }
    return String(value);
  }

  function apply(now) {
    var rows = table.querySelectorAll('tbody tr[data-queue]');
    var byName = {};
    (now.rows || []).forEach(function (r) { byName[r.name] = r; });
    Array.prototype.forEach.call(rows, function (row) {
      var r = byName[row.getAttribute('data-queue')];
      if (!r) {
        return;
      }
      Array.prototype.forEach.call(row.querySelectorAll('[data-field]'), function (cell) {
        var text = shown(cell.getAttribute('data-field'), r[cell.getAttribute('data-field')]);
        if (cell.textContent !== text) {
          cell.textContent = text;
        }
      });
    });
    if (state) {
      state.textContent = now.error ? 'the management API did not answer: ' + now.error
        : 'last read ' + now.at;
    }
  }

  function poll() {
    fetch(url, { credentials: 'same-origin', cache: 'no-store' })
      .then(function (r) {
        if (r.status === 401) {
          throw new Error('the session ended; log in again');
        }
        return r.json();
      })
      .then(apply)
      .catch(function (e) {
        if (state) {
          state.textContent = 'not refreshed: ' + e.message;
        }
      })
      .then(function () { window.setTimeout(poll, every); });
  }
  window.setTimeout(poll, every);
}());

// The parking lot: "select all shown" ticks (or unticks) every message's
// box in the form.
(function () {
  'use strict';
  var all = document.getElementById('select-all');
  var form = document.getElementById('settle');
  if (!all || !form) {
    return;
  }
  all.addEventListener('change', function () {
    Array.prototype.forEach.call(form.querySelectorAll('input[type=checkbox][name=id]'), function (box) {
      box.checked = all.checked;
    });
  });
}());

// A task's live timeline.
(function () {
  'use strict';
  var section = document.getElementById('timeline');
  if (!section || !window.EventSource) {
    return;
  }
  var list = document.getElementById('events');
  var status = document.getElementById('timeline-state');
  var source = new EventSource(section.getAttribute('data-events'));
  var states = ['scheduled', 'queued', 'running', 'progress', 'retrying', 'succeeded', 'dead_lettered'];
  var final = { succeeded: true, dead_lettered: true };

  function cell(row, text, cls) {
    var td = document.createElement('td');
    td.textContent = text === undefined || text === null ? '' : String(text);
    if (cls) {
      td.className = cls;
    }
    row.appendChild(td);
  }

  function show(state, message) {
    var event;
    try {
      event = JSON.parse(message.data);
    } catch (e) {
      return;
    }
    var row = document.createElement('tr');
    row.className = 'event';
    row.setAttribute('data-state', state);
    cell(row, event.at);
    cell(row, state, 'state');
    cell(row, event.attempt);
    cell(row, event.by);
    var detail = [event.error_kind, event.error, event.reason, event.message]
      .filter(function (v) { return v !== undefined && v !== null && v !== ''; })
      .join(' · ');
    cell(row, detail);
    list.appendChild(row);
    status.textContent = 'Live: ' + state + '.';
    status.setAttribute('data-state', state);
    if (final[state]) {
      status.textContent = 'Done: ' + state + '.';
      source.close();
    }
  }

  states.forEach(function (state) {
    source.addEventListener(state, function (message) { show(state, message); });
  });
  source.onopen = function () {
    if (!status.getAttribute('data-state')) {
      status.textContent = 'Connected; waiting for events.';
    }
  };
  source.onerror = function () {
    if (!final[status.getAttribute('data-state')]) {
      status.textContent = 'The stream was interrupted (unknown task, or the gateway went away); retrying.';
    }
  };
}());
