"""Per-region reconcilers: work queue, controller, leader election."""
