"""What test modules share (plain modules; fixtures live in conftest.py). Import them as
``support.<module>`` (``tests/`` is on ``sys.path``), never a test module from another.

- ``waiting``: the one ``wait_until(predicate, timeout, what)``, deadlines scaled to the
  host's pace.
- ``events``: the one collector (``Collector``; ``Events`` of a deployable, ``Heartbeats``
  of an assembly) with ``wait`` and ``none_within``.
- ``cpe``: the CPE harness (a plain AMQP 1.0 client, ``EventWatcher``, ``running_cped``,
  ``deployable_xml``); ``system``: cped with one running deployable (survival tests).
- ``dpe``: the DPE harness (``DpeHarness``, the ``harness`` fixture) and the deployable
  builders (``deployable``, ``assembly``, ``process_service``, ``tag``).
- ``vm``: the image cache, ``missing()``, ``console_tail``; ``terminal``: pcloudsh on a pty;
  ``bus``, ``broker``, ``procs``: small helpers; ``attacker``: an assembly's attacker.
"""
