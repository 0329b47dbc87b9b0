"""Sources turn foreign payloads into ``Signal``s. A source never touches a workload."""
