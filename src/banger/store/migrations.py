"""Schema migrations, applied in order; `schema_version` records the last one.

Never edit a released migration: append a new one.
"""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: initial schema
    """
    CREATE TABLE vms (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        state TEXT NOT NULL,
        image TEXT NOT NULL,
        kernel TEXT NOT NULL,
        engine TEXT NOT NULL,
        vcpus INTEGER NOT NULL,
        memory_mib INTEGER NOT NULL,
        disk_bytes INTEGER NOT NULL,
        work_bytes INTEGER NOT NULL,
        nat INTEGER NOT NULL DEFAULT 0,
        ip TEXT,
        mac TEXT NOT NULL,
        tap TEXT,
        handle TEXT,
        timings TEXT NOT NULL DEFAULT '{}',
        last_error TEXT,
        created_at REAL NOT NULL,
        started_at REAL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE images (
        name TEXT PRIMARY KEY,
        managed INTEGER NOT NULL,
        rootfs TEXT NOT NULL,
        work_seed TEXT,
        kernel TEXT,
        vmlinux TEXT,
        initrd TEXT,
        info TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL
    );
    CREATE TABLE kernels (
        name TEXT PRIMARY KEY,
        path TEXT NOT NULL,
        info TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL
    );
    CREATE TABLE leases (
        ip TEXT PRIMARY KEY,
        vm_id TEXT NOT NULL UNIQUE REFERENCES vms(id) ON DELETE CASCADE,
        created_at REAL NOT NULL
    );
    CREATE TABLE operations (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        target TEXT NOT NULL,
        state TEXT NOT NULL,
        created_at REAL NOT NULL,
        finished_at REAL,
        result TEXT,
        error TEXT
    );
    """,
    # 2: a vsock CID per VM (the guest agent's channel), unique among VMs; NULL for
    # VMs made before this migration until their next boot allocates one.
    """
    ALTER TABLE vms ADD COLUMN vsock_cid INTEGER;
    CREATE UNIQUE INDEX vms_vsock_cid ON vms(vsock_cid);
    """,
    # 3: published ports (`--publish`, `vm publish`): one row per host address/port
    """
    CREATE TABLE published_ports (
        vm_id TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
        proto TEXT NOT NULL,
        host_addr TEXT NOT NULL,
        host_port INTEGER NOT NULL,
        guest_port INTEGER NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (proto, host_addr, host_port)
    );
    CREATE INDEX published_ports_vm ON published_ports (vm_id);
    """,
    # 4: what a VM is for: "" for the user's VMs; "image-build:<image>" for the
    # throwaway VM of `image build` (hidden from `vm list`, removed by reconcile).
    """
    ALTER TABLE vms ADD COLUMN purpose TEXT NOT NULL DEFAULT '';
    """,
    # 5: named snapshots (`vm snapshot`): memory, device state and both disks of a VM,
    # in their own directory; `creating` rows are removed at daemon start.
    """
    CREATE TABLE snapshots (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        state TEXT NOT NULL,
        vm_id TEXT NOT NULL,
        vm_name TEXT NOT NULL,
        image TEXT NOT NULL,
        kernel TEXT NOT NULL,
        engine TEXT NOT NULL,
        vcpus INTEGER NOT NULL,
        memory_mib INTEGER NOT NULL,
        disk_bytes INTEGER NOT NULL,
        work_bytes INTEGER NOT NULL,
        nat INTEGER NOT NULL,
        vm_state TEXT NOT NULL,
        dir TEXT NOT NULL,
        size_bytes INTEGER NOT NULL DEFAULT 0,
        info TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL
    );
    """,
]
