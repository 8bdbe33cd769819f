// A Node.js client of pcloud with rhea (AMQP 1.0), for tests/test_other_clients.py.
// Environment: PCLOUD_BROKER_URL (amqp://user:password@host:port, an observer's login) and
// DEPLOYABLE. Prints "subscribed" once it listens to that deployable's events, then, after its
// deployable_state_change to running, calls deployables_list and deployable_status; prints one
// JSON line per event or answer ({what, subject, xml}) and exits 0.
'use strict';
const rhea = require('rhea');
const { randomUUID } = require('crypto');

const url = new URL(process.env.PCLOUD_BROKER_URL);
const login = decodeURIComponent(url.username);
const dep = process.env.DEPLOYABLE;
const replyTo = 'pcloud.reply.' + randomUUID();

const container = rhea.create_container({ id: 'rhea-test-' + dep });
const conn = container.connect({
  host: url.hostname, port: Number(url.port),
  username: login, password: decodeURIComponent(url.password),
});

function text(body) {               // a data section (what pcloud sends) or a string
  if (typeof body === 'string') return body;
  if (Buffer.isBuffer(body)) return body.toString('utf8');
  return Buffer.from(body.content).toString('utf8');
}

function print(what, subject, xml) {
  process.stdout.write(JSON.stringify({ what, subject, xml }) + '\n');
}

const sender = conn.open_sender('pcloud.cpe');
const pending = new Map();

function call(method, body, then) {
  const id = randomUUID();
  pending.set(id, then);
  sender.send({
    message_id: id, correlation_id: id, reply_to: replyTo, subject: method,
    user_id: login, content_type: 'application/xml',
    application_properties: { 'pcloud.opcode': 'method_request' },
    body: rhea.message.data_section(Buffer.from(body, 'utf8')),
  });
}

let opened = 0;
function onOpen() {
  if (++opened === 2) process.stdout.write('subscribed\n');
}

const replies = conn.open_receiver(replyTo);
replies.on('receiver_open', onOpen);
replies.on('message', (context) => {
  const msg = context.message;
  const then = pending.get(String(msg.correlation_id));
  if (!then) return;
  pending.delete(String(msg.correlation_id));
  print(msg.subject, msg.subject, text(msg.body));
  then();
});

let called = false;
const events = conn.open_receiver({ source: { address: `/topic/pcloud.event.${dep}.#` } });
events.on('receiver_open', onOpen);
events.on('message', (context) => {
  const xml = text(context.message.body);
  if (called || !/type="deployable_state_change"/.test(xml) || !/state="running"/.test(xml)) {
    return;
  }
  called = true;
  print('event', context.message.subject, xml);
  call('deployables_list', '<deployables/>', () =>
    call('deployable_status', `<deployable name="${dep}"/>`, () => {
      conn.close();
      process.exit(0);
    }));
});

conn.on('connection_error', (context) => {
  process.stderr.write(`connection error: ${JSON.stringify(context.connection.error)}\n`);
  process.exit(1);
});
conn.on('disconnected', (context) => {
  if (context.error) {
    process.stderr.write(`disconnected: ${context.error}\n`);
    process.exit(1);
  }
});
setTimeout(() => { process.stderr.write('timed out\n'); process.exit(2); }, 80000);
