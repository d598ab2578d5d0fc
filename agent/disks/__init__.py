"""Volumes behind VM disks: container disks from registries, NoCloud seeds, host disks."""
