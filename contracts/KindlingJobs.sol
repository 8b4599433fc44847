// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.26;

/// The service-manager hooks KindlingJobs calls (the subset of Tangle's IBlueprintServiceManager it needs).
interface IKindlingServiceManager {
    /// Called once by createService: the manager accepts being bound to this service (it reverts otherwise).
    function onServiceCreated(uint64 serviceId, address creator) external;
    function onRegister(address operator, bytes calldata registrationInputs) external payable;
    function onUnregister(address operator) external;
    function onJobCall(uint64 serviceId, uint8 job, uint64 jobCallId, bytes calldata inputs) external payable;
    function onJobResult(
        uint64 serviceId,
        uint8 job,
        uint64 jobCallId,
        address operator,
        bytes32 inputsHash,
        bytes calldata outputs
    ) external payable;
}

/// Tangle's Types.JobCall (what getJobCall returns), same name, field order and types, so the compiled ABI matches the
/// pinned one down to its internalType.
library Types {
    struct JobCall {
        uint8 jobIndex;
        address caller;
        uint64 createdAt;
        uint32 resultCount;
        bool completed;
        bool isRFQ;
        uint256 payment;
    }
}

/// A minimal Tangle-compatible jobs contract for local chains (anvil, tests, private networks). It implements the
/// subset of Tangle v2's ITangleJobs that Kindling's operator and clients use, with the same event and function
/// signatures, so the operator runs unchanged against this contract and against a real Tangle deployment. It keeps
/// no registry of blueprints or staking: a service is a manager address, the manager decides who may answer a call,
/// and a job's payment is handed to the manager with the call (it pays the operator that answers).
contract KindlingJobs {
    struct Service {
        address owner;
        IKindlingServiceManager manager;
        uint64 nextCallId;
    }

    event ServiceCreated(uint64 indexed serviceId, address indexed owner, address manager);
    event JobSubmitted(uint64 indexed serviceId, uint64 indexed callId, uint8 indexed jobIndex, address caller, bytes inputs);
    event JobResultSubmitted(uint64 indexed serviceId, uint64 indexed callId, address indexed operator, bytes result);
    event JobCompleted(uint64 indexed serviceId, uint64 indexed callId);

    error UnknownService(uint64 serviceId);
    error UnknownJobCall(uint64 serviceId, uint64 callId);
    error JobAlreadyCompleted(uint64 serviceId, uint64 callId);
    error LengthMismatch(uint256 callIds, uint256 results);
    error ZeroManager();

    uint64 public serviceCount;
    mapping(uint64 => Service) private services;
    mapping(uint64 => mapping(uint64 => Types.JobCall)) private calls;
    mapping(uint64 => mapping(uint64 => bytes32)) private inputsHashes;

    function createService(address manager) external returns (uint64 serviceId) {
        if (manager == address(0)) revert ZeroManager();
        serviceId = serviceCount++;
        services[serviceId] = Service({owner: msg.sender, manager: IKindlingServiceManager(manager), nextCallId: 0});
        emit ServiceCreated(serviceId, msg.sender, manager);
        // The manager refuses a second service and a creator that is not its owner: without that, anyone could point
        // a service of their own at a real manager and load its operators with jobs.
        IKindlingServiceManager(manager).onServiceCreated(serviceId, msg.sender);
    }

    function serviceManager(uint64 serviceId) external view returns (address) {
        return address(_service(serviceId).manager);
    }

    function registerOperator(uint64 serviceId, bytes calldata registrationInputs) external {
        _service(serviceId).manager.onRegister(msg.sender, registrationInputs);
    }

    function unregisterOperator(uint64 serviceId) external {
        _service(serviceId).manager.onUnregister(msg.sender);
    }

    /// Any job index is accepted: the operator answers one it does not know with an error result, so the caller
    /// learns why instead of seeing a revert from a contract that cannot know the blueprint's job list.
    function submitJob(uint64 serviceId, uint8 jobIndex, bytes calldata inputs) external payable returns (uint64 callId) {
        Service storage service = _service(serviceId);
        callId = service.nextCallId++;
        calls[serviceId][callId] = Types.JobCall({
            jobIndex: jobIndex,
            caller: msg.sender,
            createdAt: uint64(block.timestamp),
            resultCount: 0,
            completed: false,
            isRFQ: false,
            payment: msg.value
        });
        inputsHashes[serviceId][callId] = keccak256(inputs);
        emit JobSubmitted(serviceId, callId, jobIndex, msg.sender, inputs);
        // The manager assigns an operator or reverts (no operator registered): then the whole submission fails and
        // nothing is left waiting for an answer that never comes.
        // The payment goes with the call: the manager holds it for the assigned operator.
        service.manager.onJobCall{value: msg.value}(serviceId, jobIndex, callId, inputs);
    }

    /// The manager decides whether msg.sender may answer (the assigned operator only) by reverting otherwise.
    function submitResult(uint64 serviceId, uint64 callId, bytes calldata result) public {
        Service storage service = _service(serviceId);
        Types.JobCall storage call = calls[serviceId][callId];
        if (callId >= service.nextCallId) revert UnknownJobCall(serviceId, callId);
        if (call.completed) revert JobAlreadyCompleted(serviceId, callId);
        // Completed before the manager is called: a manager that calls back into submitResult finds the call done
        // and cannot post a second result (if the manager reverts, so does all of this).
        call.resultCount += 1;
        call.completed = true;
        service.manager.onJobResult(serviceId, call.jobIndex, callId, msg.sender, inputsHashes[serviceId][callId], result);
        emit JobResultSubmitted(serviceId, callId, msg.sender, result);
        emit JobCompleted(serviceId, callId);
    }

    function submitResults(uint64 serviceId, uint64[] calldata callIds, bytes[] calldata results) external {
        if (callIds.length != results.length) revert LengthMismatch(callIds.length, results.length);
        for (uint256 i = 0; i < callIds.length; i++) submitResult(serviceId, callIds[i], results[i]);
    }

    function getJobCall(uint64 serviceId, uint64 callId) external view returns (Types.JobCall memory) {
        if (callId >= _service(serviceId).nextCallId) revert UnknownJobCall(serviceId, callId);
        return calls[serviceId][callId];
    }

    function _service(uint64 serviceId) private view returns (Service storage service) {
        service = services[serviceId];
        if (address(service.manager) == address(0)) revert UnknownService(serviceId);
    }
}
