// Warren console: a task's live timeline. Served as a file by the gateway
// (the Content-Security-Policy allows scripts of this origin only, no
// inline script). Every value is written as text (textContent), never as
// HTML, so nothing an event holds can run.
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
