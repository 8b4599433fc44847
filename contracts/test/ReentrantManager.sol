// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.26;

interface IResultSink {
    function submitResult(uint64 serviceId, uint64 callId, bytes calldata result) external;
}

/// Test only: a hostile service manager that accepts everything and, on the first result, calls back into the jobs
/// contract to post a second result for the same call. KindlingJobs must refuse that second result
/// (JobAlreadyCompleted): it marks the call completed before it calls the manager.
contract ReentrantManager {
    IResultSink public immutable jobs;
    bool private reentered;

    constructor(address jobs_) {
        jobs = IResultSink(jobs_);
    }

    function onServiceCreated(uint64, address) external {}
    function onRegister(address, bytes calldata) external payable {}
    function onUnregister(address) external {}
    function onJobCall(uint64, uint8, uint64, bytes calldata) external payable {}

    function onJobResult(uint64 serviceId, uint8, uint64 callId, address, bytes32, bytes calldata outputs) external payable {
        if (reentered) return;
        reentered = true;
        jobs.submitResult(serviceId, callId, outputs);
    }
}
